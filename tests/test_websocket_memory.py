"""WebSocket rules over an in-memory transport: handshake, chained handlers, failures, flow control."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel

from crowtwist import Connection, Crow, Response

from . import frames as F
from .conftest import LogCapture
from .memory import MemoryClient


@pytest.fixture(autouse=True, params=["twisted.web", "crow-site"])
def site_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs through a plain twisted.web Site and through the app's own site (its fast path)."""
    monkeypatch.setattr(MemoryClient, "crow_site", request.param == "crow-site")
    return str(request.param)


class Events:
    """Records every handler call of one rule."""

    def __init__(self, app: Crow, pattern: str = "/ws", echo: bool = True) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.rule = (
            app.route(pattern)
            .websocket()
            .onopen(lambda conn: self.log.append(("open", conn.params)))
            .onerror(lambda conn, message: self.log.append(("error", message)))
            .onclose(lambda conn, reason, code: self.log.append(("close", reason, code)))
        )
        if echo:
            self.rule.onmessage(self.echo)

    def echo(self, conn: Connection, data: str | bytes, is_binary: bool) -> None:
        self.log.append(("message", data, is_binary))
        if is_binary:
            conn.send_binary(data)  # type: ignore[arg-type]
        else:
            conn.send_text(data)  # type: ignore[arg-type]

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [e for e in self.log if e[0] == name]


def test_handshake_answers_101_with_accept_key() -> None:
    """The upgrade answers 101 with the RFC 6455 accept key and no Server version."""
    app = Crow()
    Events(app)
    client = MemoryClient(app, "/ws")
    assert client.status == 101
    # The worked example of RFC 6455, section 1.3.
    assert client.headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert "server" not in client.headers


def test_plain_get_gets_426_without_version() -> None:
    """A plain GET to a WebSocket route gets 426 with Upgrade: websocket and no version leak."""
    app = Crow()
    Events(app)
    client = MemoryClient(app, raw=b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.status == 426
    assert client.headers["upgrade"] == "websocket"
    assert "Twisted" not in client.headers.get("server", "") and b"Twisted" not in client.body
    assert b"autobahn" not in client.body.lower()


def test_non_get_gets_405_with_allow() -> None:
    """A POST to a WebSocket route gets 405 with Allow: GET."""
    app = Crow()
    Events(app)
    client = MemoryClient(app, raw=b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert client.status == 405
    assert client.headers["allow"] == "GET"


def test_bad_version_and_bad_key_are_refused() -> None:
    """A wrong Sec-WebSocket-Version gets 426 naming 13; a malformed key gets 400."""
    app = Crow()
    Events(app)
    raw = F.handshake("/ws").replace(b"Version: 13", b"Version: 8")
    client = MemoryClient(app, raw=raw)
    assert client.status == 426 and client.headers["sec-websocket-version"] == "13"
    client = MemoryClient(app, raw=F.handshake("/ws", key="short=="))
    assert client.status == 400


def test_messages_reach_onmessage_as_str_and_bytes() -> None:
    """Text arrives as str, binary as bytes, once per complete message, and echoes back."""
    app = Crow()
    events = Events(app)
    client = MemoryClient(app, "/ws")
    client.send_text("héllo")
    client.send_binary(b"\x00\xff")
    client.send(F.TEXT, b"frag", fin=False)
    client.send(F.CONT, b"men", fin=False)
    client.send(F.CONT, b"ted")
    assert events.named("message") == [
        ("message", "héllo", False),
        ("message", b"\x00\xff", True),
        ("message", "fragmented", False),
    ]
    assert client.messages() == ["héllo", b"\x00\xff", "fragmented"]


def test_route_params_reach_onaccept_and_every_handler() -> None:
    """Typed segments are converted and available to onaccept (request) and handlers (conn)."""
    app = Crow()
    seen: list[Any] = []

    def accept(request: Any) -> bool:
        seen.append(("accept", request.route_params))
        request.userdata = {"user": "ann"}
        return True

    (
        app.route("/room/<int>/<string>")
        .websocket()
        .onaccept(accept)
        .onopen(lambda conn: seen.append(("open", conn.params, conn.userdata)))
        .onmessage(lambda conn, data, is_binary: seen.append(("message", conn.params)))
    )
    client = MemoryClient(app, "/room/-7/lobby")
    client.send_text("x")
    assert seen == [
        ("accept", [-7, "lobby"]),
        ("open", (-7, "lobby"), {"user": "ann"}),
        ("message", (-7, "lobby")),
    ]


def test_userdata_is_none_by_default() -> None:
    """Without onaccept, conn.userdata is None."""
    app = Crow()
    seen: list[Any] = []
    app.route("/ws").websocket().onopen(lambda conn: seen.append(conn.userdata))
    MemoryClient(app, "/ws")
    assert seen == [None]


@pytest.mark.parametrize(
    ("result", "status", "header", "body"),
    [
        (False, 400, None, None),
        (Response(403, "go away", {"X-Why": "token"}), 403, ("x-why", "token"), b"go away"),
    ],
)
def test_onaccept_refusal(result: object, status: int, header: tuple[str, str] | None, body: bytes | None) -> None:
    """onaccept returning False answers 400; returning a Response answers with it; nothing opens."""
    app = Crow()
    events = Events(app)
    events.rule.onaccept(lambda req: result)
    client = MemoryClient(app, "/ws")
    assert client.status == status
    if header:
        assert client.headers[header[0]] == header[1]
    if body:
        assert client.body == body
    assert events.log == []


def test_onaccept_async_accepts_later() -> None:
    """An async onaccept holds the upgrade until it decides."""
    app = Crow()
    events = Events(app)
    gate: Deferred[bool] = Deferred()
    events.rule.onaccept(lambda req: gate)
    client = MemoryClient(app, "/ws")
    assert client.transport.value() == b""
    gate.callback(True)
    assert client.transport.value().startswith(b"HTTP/1.1 101")
    assert events.named("open")


def test_onaccept_that_raises_gets_500_and_is_logged(logs: LogCapture) -> None:
    """onaccept raising answers 500 and logs the traceback once."""
    app = Crow()
    events = Events(app)
    events.rule.onaccept(lambda req: 1 / 0)
    client = MemoryClient(app, "/ws")
    assert client.status == 500
    assert b"ZeroDivision" not in client.body
    assert len(logs.failures()) == 1


def test_onaccept_must_decide(logs: LogCapture) -> None:
    """onaccept returning neither bool nor Response is an error: 500 and a log line, not an accept."""
    app = Crow()
    events = Events(app)
    events.rule.onaccept(lambda req: None)
    assert MemoryClient(app, "/ws").status == 500
    assert any("must return True, False or a Response" in str(e.get("log_format")) for e in logs.events)


def test_client_close_reaches_onclose_once_with_code_and_reason() -> None:
    """A clean close from the peer gives onclose the peer's code and reason, once."""
    app = Crow()
    events = Events(app)
    client = MemoryClient(app, "/ws")
    client.send_close(4001, "bye")
    assert client.close_frame() is not None and client.close_frame().close_code == 4001  # type: ignore[union-attr]
    client.drop(clean=True)
    client.drop(clean=True)
    assert events.named("close") == [("close", "bye", 4001)]


def test_server_close_reports_peer_answer() -> None:
    """conn.close sends the code and reason; onclose runs once with the peer's answer."""
    app = Crow()
    events = Events(app, echo=False)
    events.rule.onmessage(lambda conn, data, is_binary: conn.close("done here", 4000))
    client = MemoryClient(app, "/ws")
    client.send_text("x")
    frame = client.close_frame()
    assert frame is not None and (frame.close_code, frame.close_reason) == (4000, "done here")
    client.send_close(4000, "ok")
    client.drop(clean=True)
    assert events.named("close") == [("close", "ok", 4000)]


def test_dropped_connection_is_1006_uncleanly() -> None:
    """A TCP drop without a close handshake gives onclose 1006 'uncleanly'."""
    app = Crow()
    events = Events(app)
    client = MemoryClient(app, "/ws")
    client.drop()
    assert events.named("close") == [("close", "uncleanly", 1006)]
    assert events.named("error") == []


def test_remote_ip_survives_into_onclose() -> None:
    """get_remote_ip still answers inside onclose."""
    app = Crow()
    seen: list[str] = []
    app.route("/ws").websocket().onclose(lambda conn, reason: seen.append(conn.get_remote_ip()))
    MemoryClient(app, "/ws").drop()
    assert seen == ["10.1.2.3"]


def test_crow_guide_signatures_still_work() -> None:
    """onerror(conn) and onclose(conn, reason), the guide's signatures, are called too."""
    app = Crow()
    seen: list[Any] = []
    (
        app.route("/ws")
        .websocket()
        .onmessage(lambda conn, data, is_binary: 1 / 0)
        .onerror(lambda conn: seen.append("error"))
        .onclose(lambda conn, reason: seen.append(("close", reason)))
    )
    client = MemoryClient(app, "/ws")
    client.send_text("x")
    client.finish_close()
    assert seen == ["error", ("close", "")]


@pytest.mark.fast_paths("close code")
def test_handler_that_raises(logs: LogCapture) -> None:
    """A raising handler is logged with its traceback, onerror runs, and the close code is 1011."""
    app = Crow()
    events = Events(app, echo=False)
    events.rule.onmessage(lambda conn, data, is_binary: [][1])
    client = MemoryClient(app, "/ws")
    client.send_text("boom")
    client.send_text("dropped")
    frame = client.close_frame()
    assert frame is not None and frame.close_code == 1011
    assert len(logs.failures()) == 1
    assert logs.failures()[0]["log_failure"].check(IndexError)
    client.finish_close()
    errors = events.named("error")
    assert len(errors) == 1 and "IndexError" in errors[0][1]
    assert [e[0] for e in events.log] == ["open", "error", "close"]


@pytest.mark.parametrize(
    ("send", "code", "message"),
    [
        (lambda c: c.send(F.TEXT, b"\xff\xfe"), 1007, "invalid UTF-8"),
        (lambda c: c.send(0x3, b"x"), 1002, "reserved"),
        (lambda c: c.send(F.PING, b"x" * 126), 1002, "control frame"),
        (lambda c: c.send(F.CONT, b"x"), 1002, "continuation"),
    ],
)
def test_protocol_errors_get_close_frames_and_onerror(send: Any, code: int, message: str) -> None:
    """Protocol violations get a close frame with the right code, onerror before onclose."""
    app = Crow()
    events = Events(app)
    client = MemoryClient(app, "/ws")
    send(client)
    frame = client.close_frame()
    assert frame is not None and frame.close_code == code
    client.finish_close()
    assert [e[0] for e in events.log] == ["open", "error", "close"]
    assert message.lower() in events.named("error")[0][1].lower()


def test_max_payload_per_route_and_app() -> None:
    """Over the route's (else the app's) bound the client gets 1009 and onerror runs."""
    app = Crow().websocket_max_payload(100)
    small = Events(app, "/small")
    small.rule.max_payload(10)
    default = Events(app, "/default")
    client = MemoryClient(app, "/small")
    client.send_text("x" * 10)
    client.send_text("x" * 11)
    assert client.messages() == ["x" * 10]
    assert client.close_frame().close_code == 1009  # type: ignore[union-attr]
    assert small.named("error")
    client = MemoryClient(app, "/default")
    client.send(F.TEXT, b"x" * 60, fin=False)
    client.send(F.CONT, b"x" * 60)
    assert client.close_frame().close_code == 1009  # type: ignore[union-attr]
    assert default.named("error")


def test_max_payload_none_lifts_the_bound() -> None:
    """max_payload(None) accepts messages over the 16 MiB default."""
    app = Crow()
    events = Events(app, echo=False)
    events.rule.onmessage(lambda conn, data, is_binary: events.log.append(("len", len(data))))
    assert app.settings.websocket_max_payload == 16 * 1024 * 1024
    events.rule.max_payload(None)
    client = MemoryClient(app, "/ws")
    client.send_binary(b"\0" * (16 * 1024 * 1024 + 1))
    assert events.named("len") == [("len", 16 * 1024 * 1024 + 1)]


def test_unmasked_frames_lenient_by_default() -> None:
    """By default, like Crow, an unmasked client frame is accepted."""
    app = Crow()
    events = Events(app)
    client = MemoryClient(app, "/ws")
    client.send(F.TEXT, b"bare", mask=False)
    assert events.named("message") == [("message", "bare", False)]


def test_unmasked_frames_fail_under_enforcement() -> None:
    """With enforce_ws_spec, an unmasked frame gets 1002 and Crow's onerror message."""
    app = Crow(enforce_ws_spec=True)
    events = Events(app)
    client = MemoryClient(app, "/ws")
    client.send(F.TEXT, b"bare", mask=False)
    assert client.close_frame().close_code == 1002  # type: ignore[union-attr]
    assert events.named("error") == [("error", "Client connection not masked.")]
    assert events.named("message") == []


def test_enforcement_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CROWTWIST_ENFORCE_WS_SPEC=1 stands in for the compile-time define."""
    monkeypatch.setenv("CROWTWIST_ENFORCE_WS_SPEC", "1")
    assert Crow().settings.enforce_ws_spec
    monkeypatch.setenv("CROWTWIST_ENFORCE_WS_SPEC", "0")
    assert not Crow().settings.enforce_ws_spec


def test_lenient_mode_warns_once_at_startup(logs: LogCapture) -> None:
    """Serving without enforcement logs one warning saying so."""
    app = Crow()
    Events(app)
    app.resource()
    app.resource()
    warnings = [e for e in logs.at(LogLevel.warn) if "unmasked" in e["log_format"]]
    assert len(warnings) == 1


def test_subprotocol_is_servers_first_choice() -> None:
    """The server's first listed protocol that the client offered is chosen; none, no header."""
    app = Crow()
    seen: list[str] = []
    (
        app.route("/ws")
        .websocket()
        .subprotocols(["chat.v2", "chat.v1"])
        .onopen(lambda conn: seen.append(conn.get_subprotocol()))
    )
    client = MemoryClient(app, "/ws", {"Sec-WebSocket-Protocol": "chat.v1, chat.v2"})
    assert client.headers["sec-websocket-protocol"] == "chat.v2"
    client = MemoryClient(app, "/ws", {"Sec-WebSocket-Protocol": "other"})
    assert client.status == 101 and "sec-websocket-protocol" not in client.headers
    assert seen == ["chat.v2", ""]


def _slow_app(max_queue: int = 16) -> tuple[Crow, list[str], list[Deferred[None]], list[tuple[Any, ...]]]:
    app = Crow()
    gates: list[Deferred[None]] = []
    seen: list[str] = []
    closes: list[tuple[Any, ...]] = []

    def slow(conn: Connection, data: str | bytes, is_binary: bool) -> Deferred[None]:
        seen.append(str(data))
        gate: Deferred[None] = Deferred()
        gates.append(gate)
        return gate

    (app.route("/ws").websocket().max_queue(max_queue).onmessage(slow)
        .onclose(lambda conn, reason, code: closes.append((code, reason))))
    return app, seen, gates, closes


def test_slow_handler_keeps_reading_until_the_queue_is_full() -> None:
    """While an onmessage is pending the socket is still read; only a full queue pauses it."""
    app, seen, gates, _ = _slow_app(max_queue=4)
    client = MemoryClient(app, "/ws")
    client.protocol.dataReceived(b"".join(F.encode(F.TEXT, b"%d" % i) for i in range(4)))
    assert seen == ["0"] and client.transport.producerState == "producing"
    client.send_text("4")
    assert client.transport.producerState == "paused"
    for i in range(4):
        gates[i].callback(None)
    assert seen == ["0", "1", "2", "3", "4"] and client.transport.producerState == "producing"


def test_ping_is_answered_while_a_handler_is_pending() -> None:
    """A ping sent while onmessage is pending gets its pong at once."""
    app, seen, gates, _ = _slow_app()
    client = MemoryClient(app, "/ws")
    client.send_text("slow")
    client.send(F.PING, b"are you there")
    pongs = [f for f in client.received() if f.opcode == F.PONG]
    assert [f.payload for f in pongs] == [b"are you there"]


def test_peer_close_while_a_handler_is_pending_cancels_it() -> None:
    """The peer's close is echoed at once, the pending handler is cancelled, queued messages
    are dropped, and onclose gets the peer's code."""
    app, seen, gates, closes = _slow_app()
    client = MemoryClient(app, "/ws")
    client.send_text("slow")
    client.send_text("queued")
    client.send_close(4321, "bye")
    frame = client.close_frame()
    assert frame is not None and frame.close_code == 4321
    assert client.transport.disconnecting
    client.drop(clean=True)
    assert gates[0].called  # cancelled
    assert seen == ["slow"] and closes == [(4321, "bye")]


def test_tcp_drop_while_a_handler_is_pending_runs_onclose() -> None:
    """A peer that vanishes while a handler hangs still gets its onclose (1006), once."""
    app, seen, gates, closes = _slow_app()
    client = MemoryClient(app, "/ws")
    client.send_text("slow")
    client.drop()
    assert closes == [(1006, "uncleanly")]


def test_connections_view_is_live_and_read_only() -> None:
    """rule.connections lists open connections and follows opens and closes."""
    app = Crow()
    events = Events(app)
    a = MemoryClient(app, "/ws")
    b = MemoryClient(app, "/ws")
    assert len(events.rule.connections) == 2
    for conn in events.rule.connections:
        conn.send_text("broadcast")
    assert a.messages() == ["broadcast"] and b.messages() == ["broadcast"]
    a.drop()
    assert len(events.rule.connections) == 1
    assert not hasattr(events.rule.connections, "add")
    assert not hasattr(events.rule.connections, "discard")


def test_send_after_close_is_dropped_silently() -> None:
    """A send on a closed connection raises nothing and sends nothing."""
    app = Crow()
    kept: list[Connection] = []
    app.route("/ws").websocket().onopen(kept.append)
    client = MemoryClient(app, "/ws")
    client.drop()
    kept[0].send_text("late")
    kept[0].send_binary(b"late")
    kept[0].send_ping()
    kept[0].close()
    assert client.transport.value() == b""
    assert not kept[0].is_open


def test_ping_pong_and_close_argument_checks() -> None:
    """send_ping and send_pong send control frames; bad payloads and codes are refused."""
    app = Crow()
    kept: list[Connection] = []
    app.route("/ws").websocket().onopen(kept.append)
    client = MemoryClient(app, "/ws")
    kept[0].send_ping(b"p")
    kept[0].send_pong(b"q")
    assert [(f.opcode, f.payload) for f in client.received()] == [(F.PING, b"p"), (F.PONG, b"q")]
    with pytest.raises(ValueError):
        kept[0].send_ping(b"x" * 126)
    with pytest.raises(ValueError):
        kept[0].close("bad", 1005)
    with pytest.raises(TypeError):
        kept[0].send_text(b"bytes")  # type: ignore[arg-type]


def test_drained_follows_transport_backpressure() -> None:
    """When the transport asks us to pause, writable turns false and drained() waits for resume."""
    app = Crow()
    kept: list[Connection] = []
    app.route("/ws").websocket().onopen(kept.append)
    client = MemoryClient(app, "/ws")
    conn = kept[0]
    assert conn.writable and conn.drained().called
    client.transport.producer.pauseProducing()
    assert not conn.writable
    waiter = conn.drained()
    assert not waiter.called
    client.transport.producer.resumeProducing()
    assert waiter.called and conn.writable


def test_drained_fires_on_close() -> None:
    """A producer waiting on drained() is released when the connection closes."""
    app = Crow()
    kept: list[Connection] = []
    app.route("/ws").websocket().onopen(kept.append)
    client = MemoryClient(app, "/ws")
    client.transport.producer.pauseProducing()
    waiter = kept[0].drained()
    client.drop()
    assert waiter.called and not kept[0].is_open


def test_decorator_form() -> None:
    """Handler methods work as decorators and return the rule."""
    app = Crow()
    ws = app.route("/ws").websocket()
    seen: list[str] = []

    @ws.onmessage
    def on_message(conn: Connection, data: str | bytes, is_binary: bool) -> None:
        seen.append(str(data))

    assert on_message is ws
    MemoryClient(app, "/ws").send_text("hi")
    assert seen == ["hi"]


def test_async_handlers() -> None:
    """async def handlers are awaited."""
    app = Crow()
    seen: list[str] = []

    async def on_message(conn: Connection, data: str | bytes, is_binary: bool) -> None:
        seen.append(str(data))
        conn.send_text(str(data).upper())

    app.route("/ws").websocket().onmessage(on_message)
    client = MemoryClient(app, "/ws")
    client.send_text("hi")
    assert seen == ["hi"] and client.messages() == ["HI"]


def test_factory_options_follow_settings() -> None:
    """Each rule's autobahn factory reflects the app's and the rule's settings, and restarts on change."""
    app = Crow(enforce_ws_spec=True)
    app.settings.allow_null_origin = False
    rule = app.route("/ws").websocket().max_payload(1234)
    factory = rule.factory
    assert factory.requireMaskedClientFrames is True
    assert factory.failByDrop is False
    assert factory.maxMessagePayloadSize == 1234
    assert factory.allowNullOrigin is False
    assert factory.server is None
    assert factory.numPorts == 1
    rule.max_payload(None)
    assert factory.numPorts == 0
    assert rule.factory is not factory and rule.factory.maxMessagePayloadSize == 0


@pytest.mark.fast_paths("compression")
def test_compression_can_be_declined() -> None:
    """permessage-deflate is accepted by default and declined when turned off for the route or app."""
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    app = Crow()
    Events(app, "/on")
    Events(app, "/off").rule.compression(False)
    assert "permessage-deflate" in MemoryClient(app, "/on", offer).headers["sec-websocket-extensions"]
    assert "sec-websocket-extensions" not in MemoryClient(app, "/off", offer).headers
    app.websocket_compression(False)
    assert "sec-websocket-extensions" not in MemoryClient(app, "/on", offer).headers
