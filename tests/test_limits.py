"""Limits with defaults a user can see and change: origins, connection caps, deadlines,
keepalive, close timeout, send buffer, hanging handlers."""

from __future__ import annotations

from typing import Any
from collections.abc import Iterator

import pytest
from twisted.internet.address import IPv4Address
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from crowtwist import Connection, Crow, Settings, WebSocketRule
from crowtwist._settings import check_positive
from crowtwist.tap import Options, configure
from crowtwist.websocket._origin import OriginPolicy
from crowtwist.websocket._rule import RuleRegistry

from . import frames as F
from .clients import connect_raw, within
from .conftest import LogCapture
from .memory import MemoryClient
from .test_end_to_end import wait_until



def test_defaults_are_documented_values() -> None:
    """The defaults docs/limits.md lists are the ones in force."""
    s = Crow().settings
    assert (s.websocket_max_payload, s.keepalive_interval, s.keepalive_timeout) == (16 << 20, 20.0, 20.0)
    assert (s.handshake_timeout, s.close_timeout, s.max_send_buffer) == (10.0, 5.0, 4 << 20)
    assert (s.send_buffer_policy, s.max_connections, s.allowed_origins) == ("close", None, None)
    assert (s.max_queue, s.max_queue_bytes) == (16, 1 << 20)


def test_max_queue_on_app_route_and_command_line() -> None:
    """max_queue is set on the app, overridden per route, and by twistd crow; 'none' lifts it."""
    app = Crow().websocket_limits(max_queue=4, max_queue_bytes=4096)
    own = app.route("/own").websocket().max_queue(2, None)
    inherited = app.route("/inherited").websocket()
    assert (own.effective_max_queue, own.effective_max_queue_bytes) == (2, None)
    assert (inherited.effective_max_queue, inherited.effective_max_queue_bytes) == (4, 4096)
    options = Options()
    options.parseOptions(["--routes", "x", "--max-queue", "none", "--max-queue-bytes", "65536"])
    configure(app, options)
    assert (inherited.effective_max_queue, inherited.effective_max_queue_bytes) == (None, 65536)
    protocol = inherited.factory.build(IPv4Address("TCP", "127.0.0.1", 1))
    assert (protocol._events.max_messages, protocol._events.max_bytes) == (None, 65536)
    with pytest.raises(ValueError, match="max_queue"):
        own.max_queue(0)
    with pytest.raises(ValueError, match="max_queue"):
        app.websocket_limits(max_queue=-1)


@pytest.mark.parametrize(
    ("patterns", "origin", "allowed"),
    [
        (["https://app.example"], "https://app.example", True),
        (["https://app.example"], "http://app.example", False),
        (["https://app.example"], "https://app.example:8443", False),
        (["https://*.example"], "https://a.b.example", True),
        (["https://*.example"], "https://example", False),
        (["app.example"], "http://app.example", True),
        (["app.example:*"], "https://app.example:8443", True),
        (["https://app.example"], None, True),
        (["https://app.example"], "null", False),
        (["https://app.example", "null"], "null", True),
        (["NULL"], "https://app.example", False),
        (["https://*.example"], "https://evil.test .example", False),
        (["https://*.example"], "https://a.example, https://evil.test", False),
        (["*"], "https://any.example:8443", True),
        (["https://[::1]:*"], "https://[::1]:9000", True),
        (["https://app.example"], "https://app.example/path", False),
        (["https://app.example"], "garbage", False),
    ],
)
def test_origin_patterns(patterns: list[str], origin: str | None, allowed: bool) -> None:
    """Origin patterns match scheme, host and port, with * wildcards in the host."""
    assert OriginPolicy(patterns).allows(origin) is allowed


def test_origin_pattern_errors() -> None:
    """A pattern with a path is refused when it is declared."""
    with pytest.raises(ValueError, match="has a path"):
        Crow().websocket_allowed_origins(["https://a.example/x"])


def test_disallowed_origin_gets_403_before_onaccept() -> None:
    """A browser page from another origin gets 403, and onaccept never runs."""
    app = Crow().websocket_allowed_origins(["https://app.example"])
    seen: list[str] = []
    app.route("/ws").websocket().onaccept(lambda req: seen.append("accept") or True)
    assert MemoryClient(app, "/ws", {"Origin": "https://evil.example"}).status == 403
    assert MemoryClient(app, "/ws", {"Origin": "null"}).status == 403
    assert seen == []
    assert MemoryClient(app, "/ws", {"Origin": "https://app.example"}).status == 101
    assert MemoryClient(app, "/ws").status == 101
    assert seen == ["accept", "accept"]


def test_route_origins_override_app() -> None:
    """A route's allowed_origins replaces the app's."""
    app = Crow().websocket_allowed_origins(["https://app.example"])
    app.route("/open").websocket().allowed_origins(["*"])
    assert MemoryClient(app, "/open", {"Origin": "https://other.example"}).status == 101


def test_connection_caps_answer_503() -> None:
    """Over a route's or the app's cap, the upgrade gets 503; a closed connection frees its place."""
    app = Crow()
    app.route("/one").websocket().max_connections(1)
    app.route("/any").websocket()
    first = MemoryClient(app, "/one")
    assert first.status == 101
    assert MemoryClient(app, "/one").status == 503
    first.drop()
    assert MemoryClient(app, "/one").status == 101
    app.websocket_limits(max_connections=2)
    assert MemoryClient(app, "/any").status == 101
    assert MemoryClient(app, "/any").status == 503


def test_limit_arguments_are_checked() -> None:
    """Nonsense limits are refused with ValueError."""
    with pytest.raises(ValueError):
        Crow().websocket_limits(max_connections=0)
    with pytest.raises(ValueError):
        Crow().websocket_limits(send_buffer_policy="drop")
    with pytest.raises(ValueError):
        Crow().websocket_limits(close_timeout=None)
    with pytest.raises(ValueError):
        Crow().route("/ws").websocket().max_connections(-1)


def test_one_check_for_positive_numbers() -> None:
    """check_positive passes positive finite numbers (ints where asked), None where optional, and names what failed."""
    assert check_positive("n", 3, integer=True) == 3 and check_positive("t", 0.5) == 0.5
    assert check_positive("n", None, integer=True) is None
    for value in (0, -1, True, 1.5, "3", float("inf")):
        with pytest.raises(ValueError, match=r"^n must be a positive int or None, not "):
            check_positive("n", value, integer=True)
    for value in (0.0, float("nan"), None):
        with pytest.raises(ValueError, match=r"^t must be a positive number, not "):
            check_positive("t", value, optional=False)


def test_limits_are_checked_as_one_change() -> None:
    """websocket_limits takes ints for counts and sizes, numbers for times, and changes nothing if one is bad."""
    app = Crow()
    with pytest.raises(ValueError, match="max_queue_bytes must be a positive int or None, not 2.5"):
        app.websocket_limits(max_connections=4, max_queue_bytes=2.5)
    with pytest.raises(ValueError, match="keepalive_interval"):
        app.websocket_limits(max_connections=4, keepalive_interval=-1)
    assert app.settings.max_connections is None
    app.websocket_limits(max_connections=4, keepalive_interval=2, close_timeout=0.5)
    assert (app.settings.max_connections, app.settings.keepalive_interval, app.settings.close_timeout) == (4, 2, 0.5)
    rule = app.route("/ws").websocket().max_queue(3, 300)
    with pytest.raises(ValueError, match=r"route '/ws': max_queue size must be a positive int or None, not 0"):
        rule.max_queue(5, 0)
    assert (rule.effective_max_queue, rule.effective_max_queue_bytes) == (3, 300)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-queue", "1.5"], "--max-queue takes a number, not '1.5'"),
        (["--max-queue", "-2"], "--max-queue must be positive, not '-2'"),
        (["--close-timeout", "0"], "--close-timeout must be positive, not '0'"),
        (["--keepalive-timeout", "nan"], "--keepalive-timeout must be positive, not 'nan'"),
    ],
)
def test_twistd_numbers_go_through_the_same_check(args: list[str], message: str) -> None:
    """twistd crow's numeric options are refused by the same check, in the command line's words."""
    with pytest.raises(SystemExit, match=message):
        Options().parseOptions(["--routes", "x", *args])


def test_a_rule_needs_settings_and_a_registry_not_an_app() -> None:
    """Rules made with one Settings and one RuleRegistry share the app-wide cap and the stopping flag."""
    settings, registry = Settings(max_connections=1), RuleRegistry()
    first = WebSocketRule("/a", settings, registry)
    second = WebSocketRule("/b", settings, registry)
    assert list(registry) == [first, second] and first.settings is settings
    assert repr(registry) == "<RuleRegistry of 2 rule(s)>"
    assert not hasattr(first, "app")
    first.reserve_slot("pending")
    assert (first.occupied(), registry.occupied()) == (1, 1)
    assert first.over_capacity() and second.over_capacity()
    first.release_slot("pending")
    assert not second.over_capacity()
    assert registry.begin_stopping() == [] and first.stopping and second.stopping
    registry.resume()
    assert not first.stopping


def test_settings_changed_directly_apply_on_request() -> None:
    """app.settings is the one Settings the rules read; apply_settings makes new connections use its changes."""
    app = Crow()
    rule = app.route("/ws").websocket()
    assert rule.settings is app.settings
    factory = rule.factory
    app.settings.keepalive_interval = 7.0
    assert rule.factory is factory
    app.apply_settings()
    assert rule.factory is not factory and rule.factory.autoPingInterval == 7.0
    with pytest.raises(AttributeError):
        app.settings = Settings()  # type: ignore[misc]


def test_twistd_options_override_limits() -> None:
    """twistd crow options set the limits; 'none' and 'off' lift them, omitted ones keep the module's."""
    app = Crow().websocket_limits(max_connections=7)
    options = Options()
    options.parseOptions(
        ["--routes", "x", "--keepalive-interval", "off", "--handshake-timeout", "3", "--max-send-buffer", "1000",
         "--send-buffer-policy", "wait", "--allowed-origin", "https://a.example", "--allowed-origin", "b.example"]
    )
    configure(app, options)
    s = app.settings
    assert (s.keepalive_interval, s.handshake_timeout, s.max_send_buffer) == (None, 3.0, 1000)
    assert s.send_buffer_policy == "wait" and s.max_connections == 7
    assert s.allowed_origins == ("https://a.example", "b.example")


def test_hanging_handler_does_not_hold_onclose(logs: LogCapture) -> None:
    """A handler whose Deferred never fires is cancelled when the connection goes; onclose still runs once."""
    app = Crow()
    seen: list[Any] = []
    (
        app.route("/ws")
        .websocket()
        .onmessage(lambda conn, data, is_binary: Deferred())
        .onerror(lambda conn, message: seen.append("error"))
        .onclose(lambda conn, reason, code: seen.append(("close", code)))
    )
    client = MemoryClient(app, "/ws")
    client.send_text("hang")
    client.send_text("queued behind it")
    assert client.transport.producerState == "producing"
    client.drop()
    assert seen == [("close", 1006)]
    assert not logs.failures()


@pytest_twisted.inlineCallbacks
def test_slowloris_is_cut_at_the_deadline(site_port: Any) -> Iterator[Any]:
    """A client that never finishes its request head is disconnected at the deadline; others are served."""
    app = Crow().websocket_limits(handshake_timeout=0.5)
    app.route("/ws").websocket().onmessage(lambda conn, data, is_binary: conn.send_text(str(data)))
    port = site_port(app)
    slow = yield connect_raw(port)
    slow.transport.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    silent = yield connect_raw(port)  # connects and sends nothing at all
    started = reactor.seconds()  # type: ignore[attr-defined]
    fast = yield connect_raw(port)
    head = yield fast.handshake("/ws")
    assert head.startswith(b"HTTP/1.1 101")
    yield within(slow.lost, 5)
    yield within(silent.lost, 5)
    assert 0.4 < reactor.seconds() - started < 3  # type: ignore[attr-defined]
    fast.transport.write(F.encode(F.TEXT, b"still here"))
    frames = yield fast.next_frames()
    assert frames[0].payload == b"still here"
    fast.transport.loseConnection()


def test_oversized_request_head_is_refused() -> None:
    """twisted.web's bounds hold on the app's site, with an answer: a 20 KB header line or 20 KB of
    headers get 431, a 20 KB request line 414, each with a short body, and the connection closes."""
    app = Crow()
    app.route("/ws").websocket()
    long_line = MemoryClient(app, raw=F.handshake("/ws", {"X-Big": "a" * 20000}), crow_site=True)
    assert long_line.status == 431 and long_line.transport.disconnecting
    assert long_line.body == b"431 Request Header Fields Too Large: header section too large\n"
    many = MemoryClient(app, raw=F.handshake("/ws", {f"X-{i}": "a" * 100 for i in range(200)}), crow_site=True)
    assert many.status == 431 and many.transport.disconnecting
    uri = MemoryClient(app, raw=F.handshake("/ws?" + "q" * 20000), crow_site=True)
    assert uri.status == 414 and uri.transport.disconnecting
    assert uri.body == b"414 URI Too Long: request line too long\n"


@pytest.mark.fast_paths("close code")
@pytest_twisted.inlineCallbacks
def test_keepalive_timeout_closes_with_1011(site_port: Any) -> Iterator[Any]:
    """A peer that never answers pings gets a close frame 1011; onerror says why."""
    app = Crow().websocket_limits(keepalive_interval=0.2, keepalive_timeout=0.3, close_timeout=0.5)
    seen: list[Any] = []
    (
        app.route("/ws")
        .websocket()
        .onerror(lambda conn, message: seen.append(message))
        .onclose(lambda conn, reason, code: seen.append(code))
    )
    port = site_port(app)
    client = yield connect_raw(port)
    yield client.handshake("/ws")

    def close_frame() -> F.Frame | None:
        return next((f for f in client.frames if f.opcode == F.CLOSE), None)

    frame = yield client.wait_for(close_frame)
    assert frame.close_code == 1011
    assert any(f.opcode == F.PING for f in client.frames)
    yield within(client.lost)
    yield wait_until(lambda: 1006 in seen)
    assert seen == ["keepalive ping timeout", 1006]


@pytest_twisted.inlineCallbacks
def test_close_timeout_drops_a_silent_peer(site_port: Any) -> Iterator[Any]:
    """A peer that never answers our close frame is dropped after close_timeout; onclose runs once, 1006."""
    app = Crow().websocket_limits(close_timeout=1.0, keepalive_interval=None)
    seen: list[Any] = []
    (
        app.route("/ws")
        .websocket()
        .onmessage(lambda conn, data, is_binary: conn.close("bye", 1000))
        .onclose(lambda conn, reason, code: seen.append((reason, code)))
    )
    port = site_port(app)
    client = yield connect_raw(port)
    yield client.handshake("/ws")
    client.transport.write(F.encode(F.TEXT, b"close me"))
    frames = yield client.next_frames()
    assert frames[0].close_code == 1000
    yield within(client.lost, 5)
    yield wait_until(lambda: bool(seen))
    assert seen == [("uncleanly", 1006)]


@pytest.mark.parametrize("policy", [pytest.param("close", marks=pytest.mark.fast_paths("close code")), "wait"])
@pytest_twisted.inlineCallbacks
def test_send_buffer_bound(site_port: Any, policy: str) -> Iterator[Any]:
    """Past max_send_buffer for a peer that does not read: 'close' sends 1008, 'wait' keeps every message."""
    app = Crow().websocket_limits(max_send_buffer=1 << 20, send_buffer_policy=policy, keepalive_interval=None)
    chunk = b"z" * (256 * 1024)
    count = 40  # 10 MiB, far past the bound and the socket buffers

    state: dict[str, bool] = {}

    def flood(conn: Connection) -> None:
        for i in range(count):
            conn.send_binary(i.to_bytes(4, "big") + chunk)
        state["unwritable"] = not conn.writable

    app.route("/ws").websocket().onopen(flood)
    port = site_port(app)
    client = yield connect_raw(port)
    client.transport.pauseProducing()
    client.transport.write(F.handshake("/ws"))
    yield wait_until(lambda: "unwritable" in state)
    assert state["unwritable"]
    client.transport.resumeProducing()
    if policy == "close":
        def close_frame() -> F.Frame | None:
            return next((f for f in client.frames if f.opcode == F.CLOSE), None)

        frame = yield client.wait_for(close_frame)
        assert frame.close_code == 1008
    else:
        frames = yield client.next_frames(count)
        assert [int.from_bytes(f.payload[:4], "big") for f in frames] == list(range(count))
    client.transport.loseConnection()




@pytest_twisted.inlineCallbacks
def test_one_large_message_is_not_a_slow_reader(site_port: Any) -> Iterator[Any]:
    """A single message larger than max_send_buffer (an echo of a big upload) is delivered, not refused."""
    app = Crow().websocket_limits(max_send_buffer=1 << 20, keepalive_interval=None)
    big = b"q" * (4 << 20)
    app.route("/ws").websocket().onopen(lambda conn: conn.send_binary(big))
    port = site_port(app)
    client = yield connect_raw(port)
    yield client.handshake("/ws")
    frames = yield client.next_frames()
    assert frames[0].opcode == F.BINARY and frames[0].payload == big
    assert not any(f.opcode == F.CLOSE for f in client.frames)
    client.transport.loseConnection()


def test_null_origin_only_where_named() -> None:
    """Origin: null passes an origin list only when the list names it (or allow_null_origin says so)."""
    app = Crow()
    app.route("/ws").websocket().allowed_origins(["https://app.example"])
    app.route("/sandboxed").websocket().allowed_origins(["https://app.example", "null"])
    app.route("/any").websocket()
    assert MemoryClient(app, "/ws", {"Origin": "null"}).status == 403
    assert MemoryClient(app, "/sandboxed", {"Origin": "null"}).status == 101
    assert MemoryClient(app, "/any", {"Origin": "null"}).status == 101  # no list: anything goes
    app.settings.allow_null_origin = True
    assert MemoryClient(app, "/ws", {"Origin": "null"}).status == 101


def test_backlog_while_the_transport_is_paused() -> None:
    """While the transport is over its high-water mark, frames wait in order (pings first); a resume sends them and fires drained()."""
    app = Crow().websocket_limits(max_send_buffer=1000, keepalive_interval=None)
    app.route("/ws").websocket()
    client = MemoryClient(app, "/ws")
    conn = client.protocol.conn
    flow = client.transport.producer
    flow.pauseProducing()
    assert not conn.writable
    drained = conn.drained()
    for i in range(3):
        conn.send_text(f"m{i}" * 100)  # 600 bytes held, under the bound
    conn.send_ping(b"p")
    assert client.received() == [] and not drained.called
    flow.resumeProducing()
    assert drained.called and conn.writable
    # A ping goes ahead of the frames waiting for the reader (keepalive must reach a slow one).
    assert [f.opcode for f in client.received()] == [F.PING] + [F.TEXT] * 3
    assert client.messages() == [f"m{i}" * 100 for i in range(3)]
    # A reader that keeps up, paused and resumed over and over, is never cut off.
    for _ in range(50):
        flow.pauseProducing()
        conn.send_binary(b"x" * 900)
        flow.resumeProducing()
    assert client.close_frame() is None and len(client.messages()) == 53


@pytest.mark.fast_paths("close code")
def test_backlog_over_the_bound_closes_after_what_was_sent() -> None:
    """A frame sent while the peer owes more than max_send_buffer is queued, then the 1008 close
    frame behind it; a clean close flushes them all."""
    app = Crow().websocket_limits(max_send_buffer=1000, keepalive_interval=None)
    closes: list[int] = []
    app.route("/ws").websocket().onclose(lambda conn, reason, code: closes.append(code))
    client = MemoryClient(app, "/ws")
    conn = client.protocol.conn
    client.transport.producer.pauseProducing()
    for _ in range(3):
        conn.send_binary(b"y" * 400)  # 1206 bytes held: over the bound, but nothing sent behind them yet
    conn.send_binary(b"over")  # the peer owes 1206 bytes before this one: the close follows it
    conn.send_binary(b"late")  # after the close began: dropped, as for any closing connection
    assert client.received() == []
    client.transport.producer.resumeProducing()
    frames = client.received()
    assert [f.opcode for f in frames] == [F.BINARY] * 4 + [F.CLOSE]
    assert frames[-1].close_code == 1008
    client.finish_close()
    assert closes == [1008]


def test_clean_close_flushes_the_backlog() -> None:
    """A peer's close arriving while frames are held back: they and the close reply go out before the TCP close."""
    app = Crow().websocket_limits(keepalive_interval=None)
    app.route("/ws").websocket()
    client = MemoryClient(app, "/ws")
    conn = client.protocol.conn
    client.transport.producer.pauseProducing()
    conn.send_binary(b"1")
    conn.send_binary(b"2")
    assert client.received() == []
    client.send_close(1000)
    assert client.transport.disconnecting
    assert [f.opcode for f in client.received()] == [F.BINARY, F.BINARY, F.CLOSE]


@pytest.mark.parametrize("pipelined", [False, True])
@pytest_twisted.inlineCallbacks
def test_upgrade_after_earlier_responses_keeps_their_order(site_port: Any, pipelined: bool) -> Iterator[Any]:
    """An upgrade pipelined behind plain requests gets its 101 after their responses, then echoes.

    The first request of a connection lets the 101 go to the socket directly;
    after earlier responses it waits for the transport to drain them first.
    """
    import socket

    from twisted.internet.threads import deferToThread

    app = Crow()
    app.route("/hello")(lambda: "x" * 300_000)
    app.route("/ws").websocket().onopen(lambda conn: conn.send_text("hi")).onmessage(
        lambda conn, data, is_binary: conn.send_text(data)
    )
    port = site_port(app)
    plain = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * (2 if pipelined else 0)

    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(plain + F.handshake("/ws") + F.encode(F.TEXT, b"echo me"))
            data = b""
            while not data.endswith(b"echo me"):
                chunk = sock.recv(1 << 16)
                assert chunk, data[-200:]
                data += chunk
            return data

    data = yield within(deferToThread(client))
    responses = data.split(b"HTTP/1.1 ")[1:]
    assert [r[:3] for r in responses] == [b"200"] * (2 if pipelined else 0) + [b"101"]
    frames, rest = F.decode_all(responses[-1].partition(b"\r\n\r\n")[2])
    assert [f.payload for f in frames] == [b"hi", b"echo me"] and rest == b""


@pytest_twisted.inlineCallbacks
def test_websocket_connections_set_tcp_nodelay(site_port: Any) -> Iterator[Any]:
    """An upgraded connection has Nagle's algorithm off, as autobahn's own set-up would leave it."""
    import socket

    seen: list[int] = []

    def on_open(conn: Connection) -> None:
        sock = conn._protocol.transport.getHandle()  # type: ignore[union-attr]
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    app = Crow()
    app.route("/ws").websocket().onopen(on_open)
    port = site_port(app)
    client = yield connect_raw(port)
    yield client.handshake("/ws")
    yield wait_until(lambda: bool(seen))
    assert seen[0] != 0
    client.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_client_close_ends_with_fin_not_reset(site_port: Any) -> Iterator[Any]:
    """After a client's close frame the server echoes it and closes TCP in order: the client reads EOF, not a reset."""
    import socket

    from twisted.internet.threads import deferToThread

    app = Crow()
    app.route("/ws").websocket().onmessage(lambda conn, data, is_binary: conn.send_text(data))
    port = site_port(app)

    def client() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(F.handshake("/ws") + F.encode(F.TEXT, b"last") + F.encode(F.CLOSE, F.close_payload(1000, "")))
            data = b""
            for _ in range(100):
                chunk = sock.recv(1 << 16)  # raises ConnectionResetError on a reset
                if not chunk:
                    return data, b"EOF"
                data += chunk
            return data, b"no EOF"

    data, end = yield within(deferToThread(client))
    frames, rest = F.decode_all(data.partition(b"\r\n\r\n")[2])
    assert [(f.opcode, f.payload) for f in frames] == [(F.TEXT, b"last"), (F.CLOSE, F.close_payload(1000, ""))]
    assert end == b"EOF" and rest == b""
