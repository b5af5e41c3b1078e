"""The app site's one-read upgrade path: what it takes, what it leaves to twisted.web, and that both answer alike."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.web.server import Request, Site

from crowtwist import Crow, Response
from crowtwist._site import CrowSite
from crowtwist.websocket._autobahn import FAST

from . import frames as F
from .conftest import LogCapture

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def make_app() -> Crow:
    app = Crow()
    echo = lambda conn, data, is_binary: conn.send_text(f"{conn.params}:{data}")  # noqa: E731
    app.route("/ws").websocket().onmessage(echo)
    app.route("/room/<int>/<string>").websocket().onmessage(echo)
    app.route("/files/<path>").websocket().onmessage(echo)
    app.route("/guarded").websocket().onaccept(lambda request: Response(401, "no\n"))
    app.route("/strict").websocket().allowed_origins(["https://ok.example"]).onmessage(echo)
    app.route("/both")(lambda request: "plain\n")
    app.route("/both").websocket().onmessage(echo)
    app.route("/page")(lambda request: "page\n")
    return app


class Served:
    """One request, as raw bytes in possibly several reads, on a site of ``app``."""

    def __init__(self, site: Site, *reads: bytes) -> None:
        self.requests = 0
        made = site.requestFactory

        def counting(*args: Any, **kwargs: Any) -> Request:
            self.requests += 1
            return made(*args, **kwargs)

        site.requestFactory = counting
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 40000))
        channel = site.buildProtocol(self.transport.getPeer())
        self.transport.protocol = channel
        channel.makeConnection(self.transport)
        for data in reads:
            self.transport.protocol.dataReceived(data)

    def response(self) -> tuple[str, dict[str, str], bytes]:
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() != "date":
                headers[name.strip().lower()] = value.strip()
        return lines[0], headers, body

    @property
    def taken_fast(self) -> bool:
        """Upgraded without twisted.web making a Request."""
        return self.requests == 0 and self.response()[0].split()[1:2] == ["101"]


class SlowSite(CrowSite):
    """The app's site without its fast path: every request goes through twisted.web."""

    def buildProtocol(self, addr: Any) -> Any:
        channel = CrowSite.buildProtocol(self, addr)
        channel.fast_upgrade = None
        return channel


def both(app: Crow, *reads: bytes) -> tuple[Served, Served]:
    """The same reads through the app's site without its fast path (twisted.web's) and with it."""
    return Served(SlowSite(app.resource()), *reads), Served(app.site(), *reads)


def head(path: str = "/ws", *extra: str, lines: list[str] | None = None) -> bytes:
    base = lines if lines is not None else [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
    ]
    return ("\r\n".join([*base, *extra]) + "\r\n\r\n").encode("latin-1")


def test_plain_upgrade_takes_the_fast_path_with_the_same_101() -> None:
    """An ordinary upgrade is taken without a twisted.web Request and answers exactly as twisted.web's path does."""
    slow, fast = both(make_app(), head())
    assert fast.taken_fast and not slow.taken_fast
    assert fast.response()[:2] == slow.response()[:2]
    assert fast.response()[1]["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    "path, params",
    [
        ("/room/42/lobby", "(42, 'lobby')"),
        ("/room/-7/caf%C3%A9?x=1", "(-7, 'café')"),
        ("/files/a/b%2Fc/d.txt", "('a/b/c/d.txt',)"),
        ("/both", "()"),
    ],
)
def test_fast_path_routes_like_the_resource_tree(path: str, params: str) -> None:
    """Typed segments, percent-escapes, a query string and <path> give the fast path the same params as the tree."""
    slow, fast = both(make_app(), head(path))
    assert fast.taken_fast
    for served in (slow, fast):
        protocol: Any = served.transport.protocol
        protocol.dataReceived(F.encode(F.TEXT, b"hi"))
        frames, _ = F.decode_all(served.transport.value().partition(b"\r\n\r\n")[2])
        assert [f.payload.decode() for f in frames] == [f"{params}:hi"]


@pytest.mark.parametrize(
    "reads",
    [
        pytest.param([head("/guarded")], id="onaccept-handler"),
        pytest.param([head("/strict", "Origin: https://evil.example")], id="origin-refused"),
        pytest.param([head("/page")], id="http-only-route"),
        pytest.param([head("/nowhere")], id="no-route"),
        pytest.param([head("/ws", "Sec-WebSocket-Version: 8")], id="version-8"),
        pytest.param([head(lines=["GET /ws HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade"])], id="no-key"),
        pytest.param([head(lines=["POST /ws HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade"])], id="post"),
        pytest.param([head("/ws", "Content-Length: 3")[:-4] + b"\r\n\r\nabc"], id="body"),
        pytest.param([head("/ws", "Expect: 100-continue")], id="expect"),
        pytest.param([head("/ws", "X-Folded: a", " b")], id="obs-fold"),
        pytest.param([head("/ws").replace(b"\r\n", b"\n")], id="bare-lf"),
        pytest.param([head("/ws", "X-Odd: caf\xe9")], id="non-ascii-value"),
        pytest.param([head("/ws", "Bad Name: x")], id="bad-header-name"),
        pytest.param([head("/ws", "X-Ctl: a\x01b")], id="control-char-value"),
        pytest.param([head("/ws", "X-Bare: a\rb")], id="bare-cr-value"),
        pytest.param([head("/ws", "NoColon")], id="no-colon"),
        pytest.param([head("/ws", ": empty-name")], id="empty-name"),
        pytest.param([head(lines=["GET /ws HTTP/1.1 ", "Host: x"])], id="request-line-trailing-space"),
        pytest.param([head("/w%FFs")], id="non-utf8-path"),
        pytest.param([head("/ws", "Sec-WebSocket-Extensions: permessage-deflate;;")], id="broken-extension-header"),
        pytest.param([head().replace(b"HTTP/1.1", b"HTTP/1.0", 1)], id="http-1.0"),
        pytest.param([head()[:40], head()[40:]], id="head-in-two-reads"),
    ],
)
def test_what_the_fast_path_leaves_is_answered_by_twisted_web(reads: list[bytes]) -> None:
    """Anything but an ordinary upgrade to a rule without onaccept goes to twisted.web, with the same answer."""
    slow, fast = both(make_app(), *reads)
    assert not fast.taken_fast
    assert fast.response() == slow.response()


@pytest.mark.parametrize(
    "extra",
    [
        ["Upgrade: websocket \t", "Connection:Upgrade"],
        ["X-Empty:", "X-Spaced:   a b  "],
        ["Connection: keep-alive", "Connection: Upgrade"],
    ],
    ids=["padded-values", "empty-and-inner-spaces", "repeated-header"],
)
def test_unusual_but_valid_header_lines_are_taken_fast_alike(extra: list[str]) -> None:
    """Values padded with blanks, empty values, repeated fields: read as twisted.web reads them."""
    base = ["GET /ws HTTP/1.1", "Host: 127.0.0.1", f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13"]
    for name, line in (("upgrade", "Upgrade: websocket"), ("connection", "Connection: Upgrade")):
        if not any(given.lower().startswith(name) for given in extra):
            base.append(line)
    slow, fast = both(make_app(), head(lines=base + extra))
    assert fast.taken_fast
    assert fast.response()[:2] == slow.response()[:2]


def test_fast_path_connection_skips_twisted_webs_set_up_but_keeps_the_deadline() -> None:
    """Until its first read, a connection has the head deadline and none of twisted.web's set-up (idle
    timer, TCP_NODELAY, producer); a silent client is aborted at the deadline, not later."""
    clock = Clock()
    site = CrowSite(make_app().resource(), handshake_timeout=5.0, reactor=clock)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 40000))
    channel = site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    assert not channel.http_started and transport.producer is None
    assert [call.getTime() for call in clock.getDelayedCalls()] == [5.0]
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnected and transport.disconnecting  # abortConnection


def test_a_first_read_the_fast_path_leaves_gets_twisted_webs_set_up() -> None:
    """A plain request sets the channel up as twisted.web would at connect: idle timer, producer."""
    clock = Clock()
    site = CrowSite(make_app().resource(), handshake_timeout=5.0, reactor=clock, timeout=60)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 40000))
    channel = site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    clock.advance(1.0)
    channel.dataReceived(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
    assert channel.http_started and transport.producer is not None
    assert b"page\n" in transport.value()
    # The idle timer runs from the first read (the deadline covered the wait before it).
    assert [call.getTime() for call in clock.getDelayedCalls()] == [61.0]


def test_an_idle_timeout_shorter_than_the_deadline_starts_at_connect() -> None:
    clock = Clock()
    site = CrowSite(make_app().resource(), handshake_timeout=5.0, reactor=clock, timeout=2)
    transport = StringTransport()
    channel = site.buildProtocol(None)
    channel.makeConnection(transport)
    assert channel.http_started
    assert sorted(call.getTime() for call in clock.getDelayedCalls()) == [2.0, 5.0]


@pytest.mark.parametrize("crow_site", [False, True])
def test_over_capacity_is_refused_by_twisted_web(crow_site: bool) -> None:
    """With the route's cap reached, the next upgrade is not taken fast and gets twisted.web's 503."""
    app = Crow()
    app.route("/ws").websocket().max_connections(1)
    site = app.site if crow_site else lambda: Site(app.resource())
    first = Served(site(), head())
    assert first.response()[0].endswith("101 Switching Protocols")
    second = Served(site(), head())
    assert second.requests == 1
    assert second.response()[0].endswith("503 Service Unavailable")


def test_refusal_is_logged_once(logs: LogCapture) -> None:
    """An origin the route refuses is logged once, by twisted.web's path, not again by the fast path."""
    Served(make_app().site(), head("/strict", "Origin: https://evil.example"))
    assert len([e for e in logs.events if "not allowed" in formatEvent(e)]) == 1


@pytest.mark.parametrize("way", ["fast", "twisted.web", "twisted.web-onaccept", "plain-site", "kept-alive"])
def test_frames_in_the_same_read_as_the_head_are_delivered(way: str) -> None:
    """Frames a client sends right behind its head, before the 101, reach onmessage in order, on every way in."""
    app = make_app()
    app.route("/accepting").websocket().onaccept(lambda request: True).onmessage(
        lambda conn, data, is_binary: conn.send_text(f"{conn.params}:{data}")
    )
    path = "/accepting" if way == "twisted.web-onaccept" else "/ws"
    frames_after = head(path) + F.encode(F.TEXT, b"one") + F.encode(F.TEXT, b"two")
    if way == "fast":
        served = Served(app.site(), frames_after)
    elif way == "plain-site":
        served = Served(Site(app.resource()), frames_after)
    elif way == "kept-alive":
        served = Served(app.site(), b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n", frames_after)
    else:
        served = Served(SlowSite(app.resource()), frames_after)
    assert served.taken_fast is (way == "fast")
    answer = served.transport.value()
    frames, _ = F.decode_all(answer[answer.index(b"101 Switching Protocols") :].partition(b"\r\n\r\n")[2])
    assert [f.payload for f in frames] == [b"():one", b"():two"]


def test_only_the_first_read_is_offered_to_the_fast_path() -> None:
    """An upgrade behind a plain request on a kept-alive connection goes through twisted.web."""
    get = b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n"
    served = Served(make_app().site(), get, head())
    assert served.requests == 2
    assert b"101 Switching Protocols" in served.transport.value()


@pytest.mark.parametrize("path, fast", [("/ws", True), ("/accepting", False)])
def test_no_timer_outlives_the_take_over(path: str, fast: bool) -> None:
    """The channel's idle timeout and head deadline are both cancelled when the fast path or the leaf takes over."""
    app = make_app()
    app.route("/accepting").websocket().onaccept(lambda request: True)
    clock = Clock()
    site = CrowSite(app.resource(), handshake_timeout=5.0, reactor=clock)
    served = Served(site, head(path))
    assert served.response()[0].endswith("101 Switching Protocols") and served.taken_fast is fast
    assert clock.getDelayedCalls() == []


def test_mounted_elsewhere_there_is_no_fast_path() -> None:
    """A CrowSite whose root is not the app's route tree leaves every request to twisted.web."""
    from twisted.web.resource import Resource

    root = Resource()
    root.putChild(b"app", make_app().resource())
    served = Served(CrowSite(root), head("/app/ws"))
    assert served.requests == 1
    assert b"101 Switching Protocols" in served.transport.value()


def test_connection_made_by_fast_path_behaves() -> None:
    """A fast-path connection runs the rule's handlers through a clean close."""
    app = Crow()
    seen: list[Any] = []
    (
        app.route("/ws")
        .websocket()
        .onopen(lambda conn: seen.append(("open", conn.get_remote_ip())))
        .onmessage(lambda conn, data, is_binary: seen.append(("message", data)))
        .onclose(lambda conn, reason, code: seen.append(("close", code)))
    )
    served = Served(app.site(), head())
    assert served.taken_fast
    protocol: Any = served.transport.protocol
    protocol.dataReceived(F.encode(F.TEXT, b"x") + F.encode(F.CLOSE, F.close_payload(1000, "")))
    assert served.transport.disconnecting
    protocol.connectionLost(Failure(ConnectionDone()))
    assert seen == [("open", "10.1.2.3"), ("message", "x"), ("close", 1000)]


@pytest.mark.parametrize("handler", ["none", "async-onclose"])
def test_a_closed_connection_is_freed_without_the_cyclic_collector(handler: str) -> None:
    """Once onclose has run and the transport lets go, nothing keeps the protocol (or its queue and
    outgoing side) alive: reference counting frees it, with no collector pass per connection (on
    crowtwist's fast paths; on autobahn's public ones the collector frees it)."""
    import gc
    import weakref

    from twisted.internet.defer import Deferred

    app = Crow()
    later: list[Deferred[None]] = []
    rule = app.route("/ws").websocket().onmessage(lambda conn, data, is_binary: conn.send_text(data))
    if handler == "async-onclose":
        def onclose(conn: Any, reason: str, code: int) -> Deferred[None]:
            later.append(Deferred())
            return later[-1]

        rule.onclose(onclose)
    served = Served(app.site(), head())
    assert served.taken_fast
    protocol: Any = served.transport.protocol
    gone = weakref.ref(protocol)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        protocol.dataReceived(F.encode(F.TEXT, b"x") + F.encode(F.CLOSE, F.close_payload(1000, "")))
        protocol.connectionLost(Failure(ConnectionDone()))
        del protocol
        del served.transport.protocol  # as Twisted's TCP transport does once the connection is lost
        if later:
            assert gone() is not None  # onclose is still running: the connection is kept for it
            later.pop().callback(None)
        if not FAST:
            # autobahn's public paths keep their own cycles: freed by the collector, still not kept.
            gc.collect()
        assert gone() is None
    finally:
        if was_enabled:
            gc.enable()


@pytest.mark.parametrize(
    "values",
    [[], [b"websocket"], [b"  WebSocket \t"], [b""], [b" "], [b"a,b"], [b"Upgrade", b"keep-alive"], [b"x\x85"], [b",,"]],
)
@pytest.mark.parametrize("lower", [True, False])
def test_head_tokens_are_split_tokens(values: list[bytes], lower: bool) -> None:
    """UpgradeHead.tokens (with its one-value shortcut) gives what split_tokens gives."""
    from crowtwist._headers import split_tokens
    from crowtwist.websocket._upgrade import UpgradeHead

    head = UpgradeHead(b"GET", b"HTTP/1.1", b"/", {b"upgrade": values}.get)
    assert head.tokens(b"upgrade", lower) == split_tokens(values, lower)
    assert head.tokens(b"connection", lower) == []


@pytest.mark.parametrize("asked", ["before", "after"])
def test_the_protocols_closed_signal_fires_once_onclose_has_run(asked: str) -> None:
    """``closed`` fires after onclose, whether asked for before the close or only after it."""
    app = Crow()
    seen: list[str] = []
    app.route("/ws").websocket().onclose(lambda conn, reason, code: seen.append("onclose"))
    served = Served(app.site(), head())
    protocol: Any = served.transport.protocol
    if asked == "before":
        protocol.closed.addCallback(lambda _: seen.append("closed"))
        assert seen == []
    protocol.dataReceived(F.encode(F.CLOSE, F.close_payload(1000, "")))
    protocol.connectionLost(Failure(ConnectionDone()))
    if asked == "after":
        protocol.closed.addCallback(lambda _: seen.append("closed"))
    assert seen == ["onclose", "closed"]
