"""Crow's WebSocket API names that crowtwist gives too, over real sockets on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.threads import deferToThread
from websockets.sync.client import connect

from crowtwist import Connection, Crow

from .clients import AutobahnClient, within


def negotiated(port: int, offered: list[str] | None) -> str | None:
    """The subprotocol the server chose for websockets' client offering ``offered``."""
    with connect(f"ws://127.0.0.1:{port}/ws", subprotocols=offered, open_timeout=10) as ws:  # type: ignore[arg-type]
        return ws.subprotocol


@pytest_twisted.inlineCallbacks
def test_mirrorprotocols_answers_with_the_clients_first_choice(site_port: Any) -> Any:
    """``rule.mirrorprotocols()`` accepts any offered subprotocol and echoes the client's first (Crow's)."""
    app = Crow()
    app.route("/ws").websocket().subprotocols(["ignored"]).mirrorprotocols()
    port = site_port(app)
    assert (yield deferToThread(negotiated, port, ["wamp.2.json", "chat"])) == "wamp.2.json"
    assert (yield deferToThread(negotiated, port, ["chat"])) == "chat"
    assert (yield deferToThread(negotiated, port, None)) is None
    app.websocket_rules[0].mirrorprotocols(False)
    assert (yield deferToThread(negotiated, port, ["ignored", "chat"])) == "ignored"


def test_mirrorprotocols_never_echoes_what_is_not_a_token() -> None:
    """A mirrored offer is a valid token (RFC 6455 4.1), so nothing odd is written back in the 101."""
    rule = Crow().route("/ws").websocket().mirrorprotocols()
    assert rule.choose_subprotocol(["a b", "x;y", "ok.v1"]) == "ok.v1"
    assert rule.choose_subprotocol(["\u00e9t\u00e9"]) is None
    assert rule.choose_subprotocol([]) is None


class PingRecorder(AutobahnClient):
    """autobahn's client, keeping the payloads of the pings and pongs it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: DeferredQueue[tuple[str, bytes]] = DeferredQueue()

    def onPing(self, payload: bytes) -> None:
        self.controls.put(("ping", payload))
        super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        self.controls.put(("pong", payload))


@pytest_twisted.inlineCallbacks
def test_send_ping_and_pong_take_str_as_utf8(site_port: Any) -> Any:
    """``send_ping("")`` and ``send_pong("h\u00e9")`` go out (as UTF-8), as Crow's ``std::string`` forms do."""
    app = Crow()
    opened: list[Connection] = []
    app.route("/ws").websocket().onopen(opened.append)
    port = site_port(app)
    client = yield opened_client(port, opened, PingRecorder)
    opened[0].send_ping("")
    opened[0].send_ping("ping me")
    opened[0].send_pong("h\u00e9")
    assert (yield within(client.controls.get())) == ("ping", b"")
    assert (yield within(client.controls.get())) == ("ping", b"ping me")
    assert (yield within(client.controls.get())) == ("pong", "h\u00e9".encode())
    assert opened[0].is_open
    with pytest.raises(TypeError, match="bytes or str, not int"):
        opened[0].send_ping(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 125"):
        opened[0].send_ping("\u00e9" * 63)  # 126 bytes in UTF-8


@inlineCallbacks
def opened_client(port: int, opened: list[Connection], protocol: type[AutobahnClient] = AutobahnClient) -> Any:
    """An autobahn client of ``ws://127.0.0.1:port/ws``, once the server's ``onopen`` has run for it."""
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/ws")
    factory.protocol = protocol
    client = yield within(TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory))
    yield within(client.is_open)
    while not opened:  # (onopen runs in the turn after the 101)
        yield within(_turn())
    return client


def _turn() -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0, lambda: None)  # type: ignore[arg-type]


def test_websocket_setters_called_bare_are_crows_getters() -> None:
    """``app.websocket_max_payload()`` (and the other setters) with no argument return the value in force."""
    app = Crow()
    assert app.websocket_max_payload() == 16 * 1024 * 1024
    assert app.websocket_max_payload(1024) is app and app.websocket_max_payload() == 1024
    assert app.websocket_max_payload(None).websocket_max_payload() is None
    assert app.websocket_compression() is True
    assert app.websocket_compression(False).websocket_compression() is False
    assert app.websocket_allowed_origins() is None
    app.websocket_allowed_origins(["https://example.com"])
    assert app.websocket_allowed_origins() == ("https://example.com",)
    assert app.websocket_limit("max_send_buffer") == 4 * 1024 * 1024
    app.websocket_limits(max_queue=3, send_buffer_policy="wait")
    assert (app.websocket_limit("max_queue"), app.websocket_limit("send_buffer_policy")) == (3, "wait")
    with pytest.raises(ValueError, match="no WebSocket limit 'max_queues'"):
        app.websocket_limit("max_queues")


def test_websocket_may_be_given_its_app_as_in_crow() -> None:
    """``.websocket(app)`` (Crow's ``.websocket(&app)``) works; another app is refused at once, saying why."""
    app = Crow()
    rule = app.route("/ws").websocket(app)
    assert app.websocket_rules == (rule,)
    with pytest.raises(ValueError, match="another app"):
        app.route("/other").websocket(Crow())


@pytest_twisted.inlineCallbacks
def test_dispatch_and_post_run_on_the_reactor_thread_after_earlier_sends(site_port: Any, logs: Any) -> Any:
    """From another thread, ``dispatch``/``post`` run after the sends that thread made; ``post`` never inline."""
    import threading

    app = Crow()
    opened: list[Connection] = []
    app.route("/ws").websocket().onopen(opened.append)
    port = site_port(app)
    client = yield opened_client(port, opened)
    conn = opened[0]
    reactor_thread = threading.get_ident()
    ran: list[tuple[str, bool]] = []

    def from_a_thread() -> None:
        conn.send_text("first")
        conn.dispatch(lambda: (ran.append(("dispatch", threading.get_ident() == reactor_thread)),
                               conn.send_text("second")))
        conn.post(lambda: (ran.append(("post", threading.get_ident() == reactor_thread)), conn.send_text("third")))

    yield deferToThread(from_a_thread)
    for expected in (b"first", b"second", b"third"):
        assert (yield client.next_message()) == (expected, False)
    assert ran == [("dispatch", True), ("post", True)]
    order: list[str] = []
    conn.post(lambda: order.append("posted"))
    conn.dispatch(lambda: order.append("dispatched"))
    order.append("returned")
    assert order == ["dispatched", "returned"]  # dispatch runs inline on the reactor thread; post later
    yield within(_turn())
    assert order == ["dispatched", "returned", "posted"]
    conn.dispatch(lambda: 1 / 0)
    assert any("conn.dispatch/post raised" in e.get("log_format", "") for e in logs.failures())


def echo_with_bound(route_bound: int, conn_bound: int) -> Crow:
    app = Crow()
    rule = app.route("/ws").websocket().max_payload(route_bound)
    rule.onopen(lambda conn: conn.set_max_payload_size(conn_bound))
    rule.onmessage(lambda conn, data, is_binary: conn.send_text(data))
    return app


def sizes_through(port: int, sizes: list[int], compression: str | None) -> tuple[list[int], int | None]:
    """Echo lengths for each message size, until the server closes; and the close code."""
    from websockets.exceptions import ConnectionClosed

    echoed: list[int] = []
    with connect(f"ws://127.0.0.1:{port}/ws", compression=compression, open_timeout=10) as ws:
        try:
            for size in sizes:
                ws.send("x" * size)
                echoed.append(len(ws.recv(timeout=10)))
        except ConnectionClosed as closed:
            return echoed, closed.rcvd.code if closed.rcvd else None
    return echoed, None


@pytest.mark.parametrize("compression", [None, "deflate"])
@pytest_twisted.inlineCallbacks
def test_set_max_payload_size_bounds_the_connection_from_the_next_message(site_port: Any, compression: Any) -> Any:
    """``conn.set_max_payload_size(n)`` (Crow's) lowers one connection's bound: a larger message gets 1009."""
    port = site_port(echo_with_bound(1024 * 1024, 100))
    echoed, code = yield deferToThread(sizes_through, port, [100, 50, 101, 5], compression)
    assert echoed == [100, 50] and code == 1009


@pytest_twisted.inlineCallbacks
def test_set_max_payload_size_may_raise_the_routes_bound(site_port: Any) -> Any:
    """Without compression, a connection's own bound may be above its route's."""
    port = site_port(echo_with_bound(100, 1000))
    echoed, code = yield deferToThread(sizes_through, port, [100, 1000, 1001], None)
    assert echoed == [100, 1000] and code == 1009


def test_set_max_payload_size_checks_its_argument() -> None:
    """A bound is a positive int or None, refused at the call otherwise."""
    from crowtwist.websocket._connection import Connection as Conn

    class Route:
        pattern = "/ws"
        connections: tuple[Conn, ...] = ()

    conn = Conn(None, Route(), (), None, "127.0.0.1", None)  # type: ignore[arg-type]
    for bad in (0, -1, 1.5, "10", True):
        with pytest.raises(ValueError, match="max payload size must be a positive int"):
            conn.set_max_payload_size(bad)  # type: ignore[arg-type]
    conn.set_max_payload_size(None)  # (closed: nothing to bound, no error)


@pytest.mark.parametrize("on", [True, False])
@pytest_twisted.inlineCallbacks
def test_websocket_tcp_nodelay_sets_the_upgraded_sockets_option(site_port: Any, on: bool) -> Any:
    """``app.websocket_tcp_nodelay(on)`` (Crow's) decides TCP_NODELAY on upgraded sockets; on by default."""
    import socket

    app = Crow()
    assert app.websocket_tcp_nodelay() is True
    app.websocket_tcp_nodelay(on)
    opened: list[Connection] = []
    app.route("/ws").websocket().onopen(opened.append)
    port = site_port(app)
    yield opened_client(port, opened)
    sock = opened[0]._protocol.transport.getHandle()  # (the server's socket, read as the kernel has it)
    assert bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)) is on


def test_twistd_no_tcp_nodelay_option() -> None:
    """``twistd crow --no-tcp-nodelay`` turns the setting off."""
    from crowtwist.tap import Options, configure

    options = Options()
    options.parseOptions(["--routes", "tests.broker_routes", "--no-tcp-nodelay"])
    app = Crow()
    configure(app, options)
    assert app.websocket_tcp_nodelay() is False


def test_close_status_codes_have_crows_names() -> None:
    """Every name of Crow's ``CloseStatusCode`` enum is a ``CloseStatusCode`` member with Crow's value."""
    from crowtwist import CloseStatusCode

    crows = {
        "NormalClosure": 1000, "EndpointGoingAway": 1001, "ProtocolError": 1002, "UnacceptableData": 1003,
        "InconsistentData": 1007, "PolicyViolated": 1008, "MessageTooBig": 1009, "ExtensionsNotNegotiated": 1010,
        "UnexpectedCondition": 1011, "NoStatusCodePresent": 1005, "ClosedAbnormally": 1006,
        "TLSHandshakeFailure": 1015,
    }
    for name, value in crows.items():
        assert getattr(CloseStatusCode, name) == value, name
