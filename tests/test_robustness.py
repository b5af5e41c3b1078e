"""What black-box probes found, over real sockets on 127.0.0.1 with clients we did not write
(the websockets library, autobahn's client) and raw sockets where the peer must misbehave:
a pending handler never makes its connection deaf, close frames are judged by RFC 6455,
flow control counts every byte not yet on the wire, and timers are never early."""

from __future__ import annotations

import socket
import zlib
import time
from typing import Any
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from crowtwist import Connection, Crow

from . import frames as F
from .clients import RawClient, connect_autobahn, connect_raw, within
from .test_end_to_end import serve, wait_until  # noqa: F401  (a fixture)


def later(seconds: float, value: object = None) -> Deferred[Any]:
    return deferLater(reactor, seconds, lambda: value)  # type: ignore[arg-type]


class Recorder:
    """A WebSocket route whose handlers record what they see."""

    def __init__(self, app: Crow, pattern: str = "/ws") -> None:
        self.log: list[tuple[Any, ...]] = []
        self.pending: list[Deferred[Any]] = []
        self.cancelled: list[str] = []
        self.rule = (
            app.route(pattern)
            .websocket()
            .onopen(lambda conn: self.log.append(("open",)))
            .onerror(lambda conn, message: self.log.append(("error", message)))
            .onclose(lambda conn, reason, code: self.log.append(("close", code, reason)))
        )

    def hang(self, conn: Connection, data: str | bytes, is_binary: bool) -> Deferred[None]:
        """An onmessage that never finishes by itself."""
        self.log.append(("message", data))
        d: Deferred[None] = Deferred(lambda _: self.cancelled.append(str(data)))
        self.pending.append(d)
        return d

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [e for e in self.log if e[0] == name]


# 1. A pending handler must not make its connection deaf.


@pytest_twisted.inlineCallbacks
def test_slow_handler_is_not_a_dead_peer(serve: Any) -> Iterator[Any]:
    """With keepalive 0.3 s / 0.3 s, an onmessage that takes 1.5 s does not get its healthy peer closed."""
    app = Crow().websocket_limits(keepalive_interval=0.3, keepalive_timeout=0.3)
    rec = Recorder(app)

    async def slow(conn: Connection, data: str | bytes, is_binary: bool) -> None:
        await later(1.5)
        conn.send_text(f"done {data}")

    rec.rule.onmessage(slow)
    port = serve(app)

    def client() -> list[str]:
        with ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5, close_timeout=5) as ws:
            ws.send("a")
            first = str(ws.recv(timeout=10))
            ws.send("b")
            return [first, str(ws.recv(timeout=10))]

    replies = yield within(deferToThread(client), 20)
    assert replies == ["done a", "done b"]
    yield wait_until(lambda: bool(rec.named("close")))
    assert rec.named("close") == [("close", 1000, "")]
    assert not rec.named("error")


@pytest_twisted.inlineCallbacks
def test_peer_close_during_a_hung_handler_is_answered_at_once(serve: Any) -> Iterator[Any]:
    """Keepalive off, onmessage hangs: the peer's close is echoed at once, the handler is cancelled,
    onclose gets the peer's code, and the socket is freed."""
    app = Crow().websocket_limits(keepalive_interval=None)
    rec = Recorder(app)
    rec.rule.onmessage(rec.hang)
    port = serve(app)

    def client() -> tuple[float, int | None]:
        with ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5, close_timeout=5) as ws:
            ws.send("hang")
            ws.send("queued")
            started = time.monotonic()
            ws.close(4000, "leaving")
            rcvd = ws.protocol.close_rcvd
            return time.monotonic() - started, rcvd.code if rcvd else None

    took, echoed = yield within(deferToThread(client))
    assert echoed == 4000 and took < 2
    yield wait_until(lambda: bool(rec.named("close")))
    assert rec.named("close") == [("close", 4000, "leaving")]
    assert rec.cancelled == ["hang"] and rec.named("message") == [("message", "hang")]
    assert len(rec.rule.connections) == 0


@pytest_twisted.inlineCallbacks
def test_tcp_close_during_hung_handlers_frees_every_socket(serve: Any) -> Iterator[Any]:
    """Peers that just leave (FIN, no close frame) while handlers hang each get onclose 1006, once."""
    app = Crow().websocket_limits(keepalive_interval=None)
    rec = Recorder(app)
    rec.rule.onmessage(rec.hang)
    port = serve(app)
    clients = []
    for _ in range(4):
        raw = yield connect_raw(port)
        yield raw.handshake("/ws")
        raw.transport.write(F.encode(F.TEXT, b"hang"))
        clients.append(raw)
    yield wait_until(lambda: len(rec.named("message")) == 4)
    for raw in clients:
        raw.transport.loseConnection()
    yield wait_until(lambda: len(rec.named("close")) == 4)
    assert rec.named("close") == [("close", 1006, "uncleanly")] * 4
    assert len(rec.cancelled) == 4 and len(rec.rule.connections) == 0


@pytest_twisted.inlineCallbacks
def test_ping_answered_and_order_kept_while_a_handler_is_pending(serve: Any) -> Iterator[Any]:
    """A raw client's ping is answered while onmessage is pending; messages still run one at a time, in order."""
    app = Crow()
    rec = Recorder(app)
    running: list[int] = []

    async def handler(conn: Connection, data: str | bytes, is_binary: bool) -> None:
        running.append(1)
        assert len(running) == 1, "two handlers of one connection ran at once"
        rec.log.append(("message", data))
        if data == "0":
            await later(0.3)
        conn.send_text(f"done {data}")
        running.pop()

    rec.rule.onmessage(handler)
    port = serve(app)
    raw = yield connect_raw(port)
    yield raw.handshake("/ws")
    raw.transport.write(b"".join(F.encode(F.TEXT, b"%d" % i) for i in range(5)) + F.encode(F.PING, b"hi"))
    frames = yield raw.next_frames(1)
    assert (frames[0].opcode, frames[0].payload) == (F.PONG, b"hi")
    frames = yield raw.next_frames(5)
    assert [f.payload for f in frames] == [b"done %d" % i for i in range(5)]
    raw.transport.loseConnection()


@pytest.mark.fast_paths("queue bound")
@pytest_twisted.inlineCallbacks
def test_a_full_queue_pauses_reading(serve: Any) -> Iterator[Any]:
    """A client that floods a connection whose handler hangs fills the queue, then the socket:
    parsing stops at the message that fills the queue, so the server holds no more than the bound."""
    app = Crow().websocket_limits(keepalive_interval=None)
    rec = Recorder(app)
    rec.rule.max_queue(8, 64 * 1024).onmessage(rec.hang)
    port = serve(app)
    raw = yield connect_raw(port)
    yield raw.handshake("/ws")
    payload = F.encode(F.BINARY, b"x" * 1024)
    for _ in range(4000):  # 4 MiB: more than the socket buffers hold
        raw.transport.write(payload)
    yield wait_until(lambda: bool(rec.named("message")))
    (conn,) = rec.rule.connections
    queue = conn._protocol._events
    yield wait_until(lambda: queue.paused)
    yield later(0.2)
    assert len(queue) <= 8 and queue.queued_bytes <= 8 * 1024
    raw.transport.abortConnection()


# 4. Close frames.

INVALID_CLOSES = [
    ((999).to_bytes(2, "big"), 1002),
    ((1004).to_bytes(2, "big"), 1002),
    ((1005).to_bytes(2, "big"), 1002),
    ((1006).to_bytes(2, "big"), 1002),
    ((1015).to_bytes(2, "big"), 1002),
    ((1016).to_bytes(2, "big"), 1002),
    ((2999).to_bytes(2, "big"), 1002),
    ((5000).to_bytes(2, "big"), 1002),
    (b"\x03", 1002),
    ((1000).to_bytes(2, "big") + b"\xc3\x28", 1007),
]


@pytest.mark.parametrize("payload,expected", INVALID_CLOSES, ids=lambda v: v.hex() if isinstance(v, bytes) else str(v))
@pytest_twisted.inlineCallbacks
def test_invalid_close_frame_is_answered_with_its_error(serve: Any, payload: bytes, expected: int) -> Iterator[Any]:
    """A close frame that breaks RFC 6455 gets a close frame with 1002 (1007 for a bad reason),
    then the TCP close; onerror, then onclose with that code."""
    app = Crow()
    rec = Recorder(app)
    rec.rule.onmessage(lambda conn, data, is_binary: None)
    port = serve(app)
    raw = yield connect_raw(port)
    yield raw.handshake("/ws")
    raw.transport.write(F.encode(F.CLOSE, payload))
    frames = yield raw.next_frames(1)
    assert frames[0].opcode == F.CLOSE and frames[0].close_code == expected
    yield within(raw.lost)  # the server closed the TCP connection, not a reset from us
    yield wait_until(lambda: bool(rec.named("close")))
    assert [e[0] for e in rec.log] == ["open", "error", "close"]
    assert rec.named("close")[0][1] == expected


@pytest.mark.parametrize(
    "code",
    [
        pytest.param(1012, marks=pytest.mark.fast_paths("close code")),
        pytest.param(1013, marks=pytest.mark.fast_paths("close code")),
        pytest.param(1014, marks=pytest.mark.fast_paths("1014")),
        3000,
        4999,
    ],
)
@pytest_twisted.inlineCallbacks
def test_registered_codes_are_valid_both_ways(serve: Any, code: int) -> Iterator[Any]:
    """1012-1014 (and the application range) are echoed when received and may be sent with conn.close()."""
    app = Crow()
    rec = Recorder(app)
    rec.rule.onmessage(lambda conn, data, is_binary: conn.close("as asked", int(data)))
    port = serve(app)

    def client() -> tuple[int, str] | None:
        with ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5, close_timeout=5) as ws:
            ws.send(str(code))
            try:
                ws.recv(timeout=5)
            except ConnectionClosed as closed:
                return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else None
        return None

    # websockets knows 1012-1014 (autobahn's client does not know 1014) and echoes the code.
    received = yield within(deferToThread(client))
    assert received == (code, "as asked")
    raw = yield connect_raw(port)
    yield raw.handshake("/ws")
    raw.transport.write(F.encode(F.CLOSE, F.close_payload(code, "peer")))
    frames = yield raw.next_frames(1)
    assert frames[0].close_code == code
    yield wait_until(lambda: len(rec.named("close")) == 2)
    assert rec.named("close") == [("close", code, "as asked"), ("close", code, "peer")]
    assert not rec.named("error")


def test_parse_close_against_the_rfc() -> None:
    """parse_close accepts exactly the codes a peer may send, and UTF-8 reasons."""
    from crowtwist.websocket._close import CloseCode, CloseFrameError, parse_close

    valid = {1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)}
    for code in range(0, 70000, 1):
        if code > 65535:
            break
        payload = code.to_bytes(2, "big") + b"why"
        if code in valid:
            assert parse_close(payload) == (code, "why")
        else:
            with pytest.raises(CloseFrameError) as raised:
                parse_close(payload)
            assert raised.value.code == CloseCode.PROTOCOL_ERROR
    assert parse_close(b"") == (None, "")
    assert CloseCode.NormalClosure == 1000 and CloseCode.EndpointGoingAway == CloseCode.GOING_AWAY


@pytest.mark.fast_paths("compression")
@pytest_twisted.inlineCallbacks
def test_deflate_message_over_max_payload_completes_the_close(serve: Any) -> Iterator[Any]:
    """With permessage-deflate, a message over max_payload gets 1009 and the close handshake
    completes at once: onclose gets 1009, not 1006 after the close timeout."""
    app = Crow().websocket_limits(close_timeout=5)
    rec = Recorder(app)
    rec.rule.max_payload(100_000).onmessage(lambda conn, data, is_binary: None)
    port = serve(app)

    def client() -> tuple[int | None, str | None]:
        with ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5, close_timeout=5) as ws:
            ws.send(b"\0" * 1_000_000)
            try:
                ws.recv(timeout=5)
            except ConnectionClosed as closed:
                return (closed.rcvd.code if closed.rcvd else None), ws.response.headers.get("Sec-WebSocket-Extensions")
        return None, None

    started = reactor.seconds()  # type: ignore[attr-defined]
    code, extensions = yield within(deferToThread(client))
    assert code == 1009 and extensions and "permessage-deflate" in extensions
    yield wait_until(lambda: bool(rec.named("close")), 3)
    assert rec.named("close")[0][1] == 1009
    assert reactor.seconds() - started < 3  # type: ignore[attr-defined]


# 5. Flow control and timers.


@pytest_twisted.inlineCallbacks
def test_writable_counts_what_the_transport_holds(serve: Any) -> Iterator[Any]:
    """After a large send to a peer that reads nothing, writable is false and drained() waits."""
    app = Crow().websocket_limits(keepalive_interval=None)
    conns: list[Connection] = []
    app.route("/ws").websocket().onopen(conns.append)
    port = serve(app)
    raw = yield connect_raw(port)
    yield raw.handshake("/ws")
    raw.transport.pauseProducing()  # and never reads again
    yield wait_until(lambda: bool(conns))
    conn = conns[0]
    conn.send_binary(b"\0" * (32 * 1024 * 1024))
    assert not conn.writable
    drained = conn.drained()
    yield later(0.1)
    assert not drained.called and conn.is_open
    raw.transport.abortConnection()
    yield within(drained)


@pytest_twisted.inlineCallbacks
def test_readme_drained_loop_with_large_chunks_reaches_a_fast_reader(serve: Any) -> Iterator[Any]:
    """The README's `await conn.drained()` loop, 5 MiB chunks, a reader that keeps up: all arrive, no 1008."""
    app = Crow()
    chunk = b"z" * (5 * 1024 * 1024)
    closes: list[int] = []

    async def stream(conn: Connection) -> None:
        for _ in range(6):
            await conn.drained()
            if not conn.is_open:
                return
            conn.send_binary(chunk)
        conn.close("done", 1000)

    app.route("/ws").websocket().onopen(stream).onclose(lambda conn, reason, code: closes.append(code))
    port = serve(app)

    def client() -> int:
        total = 0
        with ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5, max_size=None, compression=None) as ws:
            try:
                while True:
                    total += len(ws.recv(timeout=20))
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 1000, closed
        return total

    total = yield within(deferToThread(client), 60)
    assert total == 6 * len(chunk)
    yield wait_until(lambda: bool(closes))
    assert closes == [1000]


def test_bucket_timer_is_never_early() -> None:
    """Deadlines round up to the next bucket, never down; one reactor call serves a bucket."""
    from crowtwist.websocket._timers import BucketTimer

    clock = Clock()
    clock.advance(100.7)
    timer = BucketTimer(clock.callLater, clock.seconds, resolution=0.02)
    fired: list[float] = []
    for delay in (0.5, 0.5, 0.013, 1.0, 0.0):
        timer.call_later(delay, lambda d=delay: fired.append(d))
    assert len(clock.getDelayedCalls()) == 4  # the two 0.5 s timers share a bucket
    cancelled = timer.call_later(0.3, lambda: fired.append(-1))
    cancelled.cancel()
    for _ in range(80):
        clock.advance(0.0125)
        due = [d for d in fired]
        for d in due:
            assert d <= clock.seconds() - 100.7 + 1e-9
    assert sorted(fired) == [0.0, 0.013, 0.5, 0.5, 1.0]
    cancelled.cancel()  # harmless after its time


def test_a_bucket_whose_calls_are_all_cancelled_leaves_no_reactor_call() -> None:
    """Cancelling every call of a bucket cancels its reactor call (trial sees a clean reactor); others keep theirs."""
    from crowtwist.websocket._timers import BucketTimer

    clock = Clock()
    timer = BucketTimer(clock.callLater, clock.seconds, resolution=0.02)
    fired: list[str] = []
    first, second = timer.call_later(5, fired.append, "a"), timer.call_later(5, fired.append, "b")
    kept = timer.call_later(20, fired.append, "kept")
    assert len(clock.getDelayedCalls()) == 2
    first.cancel()
    first.cancel()  # twice counts once
    assert len(clock.getDelayedCalls()) == 2
    second.cancel()
    assert len(clock.getDelayedCalls()) == 1
    again = timer.call_later(5, fired.append, "again")  # the emptied bucket is made anew
    clock.advance(30)
    assert fired == ["again", "kept"] and not clock.getDelayedCalls()
    kept.cancel()
    again.cancel()  # after they ran: nothing to undo


@pytest_twisted.inlineCallbacks
def test_sub_second_close_timeout_is_kept(serve: Any) -> Iterator[Any]:
    """close_timeout 0.5 s: peers that answer a server close within milliseconds all close cleanly."""
    app = Crow().websocket_limits(close_timeout=0.5)
    rec = Recorder(app)
    rec.rule.onmessage(lambda conn, data, is_binary: conn.close("bye", 1000))
    port = serve(app)
    for _ in range(10):
        client = yield connect_autobahn(port, "/ws")
        client.sendMessage(b"close me")
        clean, code, _ = yield within(client.closed_with)
        assert clean and code == 1000
    yield wait_until(lambda: len(rec.named("close")) == 10)
    assert {e[1] for e in rec.named("close")} == {1000}


@pytest_twisted.inlineCallbacks
def test_sub_second_keepalive_keeps_healthy_peers(serve: Any) -> Iterator[Any]:
    """keepalive 0.2 s interval / 0.5 s timeout: clients that answer pings stay open for 2 s."""
    app = Crow().websocket_limits(keepalive_interval=0.2, keepalive_timeout=0.5)
    rec = Recorder(app)
    rec.rule.onmessage(lambda conn, data, is_binary: conn.send_text("pong"))
    port = serve(app)
    clients = []
    for _ in range(3):
        clients.append((yield connect_autobahn(port, "/ws")))
    yield later(2.0)
    assert not rec.named("close") and not rec.named("error")
    for client in clients:
        client.sendClose(1000)
        yield within(client.closed_with)


@pytest.mark.fast_paths("close code")
@pytest_twisted.inlineCallbacks
def test_keepalive_still_closes_a_silent_peer(serve: Any) -> Iterator[Any]:
    """A peer that never answers pings is closed with 1011 once the pong timeout passes."""
    app = Crow().websocket_limits(keepalive_interval=0.2, keepalive_timeout=0.3, close_timeout=0.3)
    rec = Recorder(app)
    port = serve(app)
    raw = yield connect_raw(port)
    yield raw.handshake("/ws")
    frames = yield raw.next_frames(1)
    assert frames[0].opcode == F.PING  # and no pong
    frames = yield raw.wait_for(lambda: [f for f in raw.frames if f.opcode == F.CLOSE] or None)
    assert frames[0].close_code == 1011
    yield wait_until(lambda: bool(rec.named("close")))


@pytest_twisted.inlineCallbacks
def test_upgraded_sockets_have_nagle_off(serve: Any) -> Iterator[Any]:
    """TCP_NODELAY is on for every upgraded connection, whatever the HTTP channel did before."""
    app = Crow()
    conns: list[Connection] = []

    def accept(request: Any) -> bool:
        # As Twisted before 24.10 left it.
        request.channel.transport.setTcpNoDelay(False)
        return True

    app.route("/ws").websocket().onopen(conns.append)
    app.route("/accepting").websocket().onaccept(accept).onopen(conns.append)
    port = serve(app)
    for path in ("/ws", "/accepting"):
        client = yield connect_autobahn(port, path)
        yield wait_until(lambda: len(conns) == (1 if path == "/ws" else 2))
        sock = conns[-1]._protocol.transport.getHandle()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        client.sendClose(1000)
        yield within(client.closed_with)


# What the outside probes found beyond the list.


@pytest.mark.parametrize("body_header", ["Content-Length: 5", "Transfer-Encoding: chunked"])
@pytest_twisted.inlineCallbacks
def test_upgrade_with_a_body_is_refused(serve: Any, body_header: str) -> Iterator[Any]:
    """An upgrade request with a body gets 400 (its first frame would otherwise be lost behind the body)."""
    app = Crow()
    rec = Recorder(app)
    rec.rule.onaccept(lambda request: True)  # twisted.web's path either way
    port = serve(app)
    raw = yield connect_raw(port)
    name, _, value = body_header.partition(": ")
    body = b"hello" if name == "Content-Length" else b"5\r\nhello\r\n0\r\n\r\n"
    raw.transport.write(F.handshake("/ws", {name: value}) + body + F.encode(F.TEXT, b"one"))
    head = yield raw.wait_for(lambda: raw.head)
    assert head.startswith(b"HTTP/1.1 400") and not rec.named("open")
    raw.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_slow_upload_is_not_under_the_head_deadline() -> Iterator[Any]:
    """A POST whose body trickles in for longer than the handshake deadline is still answered."""
    app = Crow().websocket_limits(handshake_timeout=0.3)
    app.route("/post").methods("POST")(lambda request: str(len(request.content.read())))
    port = reactor.listenTCP(0, app.site(), interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        raw = yield connect_raw(port.getHost().port)
        raw.transport.write(b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):
            yield later(0.1)  # 0.8 s of body, well past the 0.3 s deadline
            raw.transport.write(b"x")
        head = yield raw.wait_for(lambda: raw.head)
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 1\r\n" in head
        raw.transport.loseConnection()
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_subprotocol_choice_is_deterministic(serve: Any) -> Iterator[Any]:
    """From a set (no order), the client's first choice among ours wins; from a list, our first."""
    app = Crow()
    app.route("/set").websocket().subprotocols({"chat", "superchat", "v1.json"})
    app.route("/list").websocket().subprotocols(["v1.json", "chat"])
    port = serve(app)

    def client(path: str, offer: list[str]) -> str | None:
        with ws_connect(f"ws://127.0.0.1:{port}{path}", subprotocols=offer, open_timeout=5) as ws:  # type: ignore[arg-type]
            return ws.subprotocol

    for offer, on_set, on_list in (
        (["superchat", "chat", "v1.json"], "superchat", "v1.json"),
        (["v1.json", "superchat"], "v1.json", "v1.json"),
        (["chat", "v1.json"], "chat", "v1.json"),
    ):
        assert (yield within(deferToThread(client, "/set", offer))) == on_set
        assert (yield within(deferToThread(client, "/list", offer))) == on_list


def test_origin_with_a_trailing_dot_is_refused_at_declaration() -> None:
    """An allow-list entry that no browser would ever send is an error when declared, not a silent 403."""
    with pytest.raises(ValueError, match="dot"):
        Crow().route("/ws").websocket().allowed_origins(["https://trail.example."])


REJECTED_CLOSES = {
    "fragmented": dict(opcode=F.CLOSE, payload=F.close_payload(4000, "frag"), fin=False),
    "rsv2": dict(opcode=F.CLOSE, payload=F.close_payload(4000, "rsv"), rsv=2),
    "126 bytes": dict(opcode=F.CLOSE, payload=F.close_payload(3000, "r" * 124)),
    "unmasked, enforced": dict(opcode=F.CLOSE, payload=F.close_payload(1000), mask=False),
}


@pytest.mark.parametrize("kind", list(REJECTED_CLOSES))
@pytest_twisted.inlineCallbacks
def test_rejected_close_frame_is_not_the_close(serve: Any, kind: str) -> Iterator[Any]:
    """A close frame the server rejects (fragmented, RSV bits, over 125 bytes, unmasked under
    enforcement) gets 1002, and onclose reports 1002, not the rejected frame's code."""
    app = Crow(enforce_ws_spec=kind == "unmasked, enforced")
    rec = Recorder(app)
    rec.rule.onmessage(lambda conn, data, is_binary: None)
    port = serve(app)
    raw = yield connect_raw(port)
    yield raw.handshake("/ws")
    spec = dict(REJECTED_CLOSES[kind])
    raw.transport.write(F.encode(spec.pop("opcode"), spec.pop("payload"), **spec))
    frames = yield raw.next_frames(1)
    assert frames[0].close_code == 1002
    raw.transport.write(F.encode(F.CLOSE, F.close_payload(1002)))
    yield wait_until(lambda: bool(rec.named("close")))
    assert rec.named("close")[0][1] == 1002 and rec.named("error")


@pytest_twisted.inlineCallbacks
def test_after_failing_the_peers_next_close_is_not_its_code(serve: Any) -> Iterator[Any]:
    """A bad frame then a close(4010) in one write: onerror runs at once (queued messages are
    dropped) and onclose reports the 1002 the server failed the connection with."""
    app = Crow()
    rec = Recorder(app)
    rec.rule.onmessage(rec.hang)
    port = serve(app)
    raw = yield connect_raw(port)
    yield raw.handshake("/ws")
    raw.transport.write(
        F.encode(F.TEXT, b"hang") + F.encode(F.TEXT, b"queued") + F.encode(F.TEXT, b"bad", rsv=2)
        + F.encode(F.CLOSE, F.close_payload(4010, "late"))
    )
    yield wait_until(lambda: bool(rec.named("close")))
    assert [e[0] for e in rec.log] == ["open", "message", "error", "close"]
    assert rec.named("close")[0][1] == 1002


def _deflated(size: int) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    data = compressor.compress(b"\0" * size) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


@pytest.mark.fast_paths("compression")
@pytest_twisted.inlineCallbacks
def test_compressed_flood_stays_within_the_queue_bound(serve: Any) -> Iterator[Any]:
    """40 compressed messages of 1 MiB each in one write, behind a hung handler: parsing stops
    when the queue is full, so what is held stays near max_queue_bytes, not 40 MiB."""
    app = Crow().websocket_limits(keepalive_interval=None)
    rec = Recorder(app)
    rec.rule.max_queue(None, 1024 * 1024).onmessage(rec.hang)
    port = serve(app)
    raw = yield connect_raw(port)
    head = yield raw.handshake("/ws", {"Sec-WebSocket-Extensions": "permessage-deflate; client_no_context_takeover"})
    assert b"permessage-deflate" in head
    message = F.encode(F.BINARY, _deflated(1024 * 1024), rsv=4)
    raw.transport.write(message * 41)
    yield wait_until(lambda: len(rec.named("message")) == 1)
    (conn,) = rec.rule.connections
    queue = conn._protocol._events
    yield wait_until(lambda: queue.paused)
    yield later(0.2)
    # The bound, plus the message that reached it.
    assert queue.queued_bytes <= 2 * 1024 * 1024 and len(queue) <= 2
    rec.pending[0].callback(None)  # the handler finishes: the rest is parsed, a queue's worth at a time
    yield wait_until(lambda: len(rec.named("message")) == 2)
    raw.transport.abortConnection()


@pytest.mark.fast_paths("close code")
@pytest_twisted.inlineCallbacks
def test_late_pong_does_not_cut_the_close_handshake_short(serve: Any) -> Iterator[Any]:
    """After a keepalive timeout's 1011, a late pong restarts no timer: the peer's close answer,
    within the close timeout, completes the handshake and onclose gets its code."""
    app = Crow().websocket_limits(keepalive_interval=0.2, keepalive_timeout=0.2, close_timeout=5)
    rec = Recorder(app)
    port = serve(app)
    raw = yield connect_raw(port)
    yield raw.handshake("/ws")
    (ping,) = yield raw.next_frames(1)
    assert ping.opcode == F.PING
    frames = yield raw.wait_for(lambda: [f for f in raw.frames if f.opcode == F.CLOSE] or None)
    assert frames[0].close_code == 1011
    raw.transport.write(F.encode(F.PONG, ping.payload))  # too late
    yield later(1.0)  # longer than interval + timeout: no second ping, no drop
    raw.transport.write(F.encode(F.CLOSE, F.close_payload(4444, "slow but here")))
    yield wait_until(lambda: bool(rec.named("close")))
    assert rec.named("close")[0][1:] == (4444, "slow but here")


class PingAnswerer(RawClient):
    """Answers every ping as soon as it is parsed, and keeps the other frames."""

    def dataReceived(self, data: bytes) -> None:
        before = len(self.frames)
        super().dataReceived(data)
        for frame in self.frames[before:]:
            if frame.opcode == F.PING:
                self.transport.write(F.encode(F.PONG, frame.payload))  # type: ignore[union-attr]
        self.frames = [f for f in self.frames if f.opcode != F.PING]
        self._check()


class ThrottledReader(PingAnswerer):
    """A PingAnswerer that reads at most one chunk per 20 ms."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.pauseProducing()  # type: ignore[union-attr]
        reactor.callLater(0.02, self._resume)  # type: ignore[attr-defined]

    def _resume(self) -> None:
        if self.transport is not None and self.transport.connected:  # type: ignore[attr-defined]
            self.transport.resumeProducing()  # type: ignore[attr-defined]


@pytest_twisted.inlineCallbacks
def test_keepalive_spares_a_steady_reader_behind_a_backlog(serve: Any) -> Iterator[Any]:
    """A reader slower than the app's stream, answering every ping it gets, is not closed by
    keepalive: pings go ahead of the backlog, and the pong timeout waits for our data to get out."""
    app = Crow().websocket_limits(keepalive_interval=0.2, keepalive_timeout=0.2)
    rec = Recorder(app)
    chunk = b"s" * (100 * 1024)

    async def stream(conn: Connection) -> None:
        for _ in range(60):
            await conn.drained()
            if not conn.is_open:
                return
            conn.send_binary(chunk)
        conn.close("done", 1000)

    rec.rule.onopen(stream)
    port = serve(app)
    endpoint_factory = Factory.forProtocol(ThrottledReader)
    raw = yield within(TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(endpoint_factory))
    yield raw.handshake("/ws")
    close = yield raw.wait_for(lambda: [f for f in raw.frames if f.opcode == F.CLOSE] or None)
    assert close[0].close_code == 1000, close[0].close_reason
    assert sum(len(f.payload) for f in raw.frames if f.opcode == F.BINARY) == 60 * len(chunk)
    raw.transport.loseConnection()


@pytest.mark.parametrize("kind", ["deferred", "coroutine"])
@pytest_twisted.inlineCallbacks
def test_pending_http_handler_is_cancelled_when_its_client_leaves(kind: str, logs: Any) -> Iterator[Any]:
    """A long-poll HTTP handler whose client disconnects is cancelled, and nothing is written
    to (or logged about) the gone request."""
    app = Crow()
    started: Deferred[Any] = Deferred()
    cancelled: Deferred[str] = Deferred()

    if kind == "deferred":

        def handler(request: Any) -> Deferred[str]:
            started.callback(request)
            return Deferred(lambda _: cancelled.callback(kind))

    else:

        async def handler(request: Any) -> str:  # type: ignore[misc]
            started.callback(request)
            try:
                await Deferred()
            except CancelledError:
                cancelled.callback(kind)
                raise
            return "never"

    app.route("/poll")(handler)
    port = reactor.listenTCP(0, app.site(), interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        raw = yield connect_raw(port.getHost().port)
        raw.transport.write(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        request = yield within(started)
        raw.transport.loseConnection()
        assert (yield within(cancelled)) == kind
        # One reactor turn, so that the cancelled handler's failure has gone where it goes.
        yield deferLater(reactor, 0, lambda: None)  # type: ignore[arg-type]
        assert request.channel is None and not request.finished and not logs.failures()
    finally:
        yield port.stopListening()


@pytest.mark.fast_paths("close code")
@pytest_twisted.inlineCallbacks
def test_stopping_hears_the_close_of_a_connection_whose_queue_is_full(serve: Any) -> Iterator[Any]:
    """close_all (what SIGTERM runs) on a connection whose queue is full and reading paused:
    reading resumes, so the peer's close answer is heard and onclose gets it, not 1006 later."""
    app = Crow().websocket_limits(keepalive_interval=None, close_timeout=5)
    rec = Recorder(app)
    rec.rule.max_queue(4).onmessage(rec.hang)
    port = serve(app)
    raw = yield connect_raw(port)
    yield raw.handshake("/ws")
    raw.transport.write(F.encode(F.TEXT, b"x" * 1000) * 2000)
    yield wait_until(lambda: bool(rec.rule.connections) and next(iter(rec.rule.connections))._protocol._events.paused)
    started = reactor.seconds()  # type: ignore[attr-defined]
    done = app.close_all()
    frames = yield raw.wait_for(lambda: [f for f in raw.frames if f.opcode == F.CLOSE] or None)
    assert frames[0].close_code == 1001
    raw.transport.write(F.encode(F.CLOSE, F.close_payload(1001, "ok")))
    yield within(done)
    assert rec.named("close") == [("close", 1001, "ok")]
    assert reactor.seconds() - started < 3  # type: ignore[attr-defined]



@pytest.mark.fast_paths("queue bound")
@pytest_twisted.inlineCallbacks
def test_keepalive_spares_a_peer_whose_queue_keeps_refilling(serve: Any) -> Iterator[Any]:
    """A burst bigger than the queue refills it each time it drains: no ping goes out while
    reading is paused, so a peer that answers every ping is never closed with 1011."""
    app = Crow().websocket_limits(keepalive_interval=0.2, keepalive_timeout=0.2)
    rec = Recorder(app)

    async def slow(conn: Connection, data: str | bytes, is_binary: bool) -> None:
        await later(0.1)
        conn.send_text(f"done {data}")

    rec.rule.max_queue(8).onmessage(slow)
    port = serve(app)
    raw = yield within(TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(PingAnswerer)))
    yield raw.handshake("/ws")
    raw.transport.write(b"".join(F.encode(F.TEXT, b"%d" % i) for i in range(40)))
    frames = yield raw.wait_for(
        lambda: raw.frames if len(raw.frames) >= 40 or any(f.opcode == F.CLOSE for f in raw.frames) else None
    )
    assert [f.payload for f in frames] == [b"done %d" % i for i in range(40)]
    assert not rec.named("error")
    raw.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_close_is_bounded_when_the_peer_reads_nothing_more(serve: Any) -> Iterator[Any]:
    """A peer that sends its close but reads nothing (our answer stuck behind a backlog): the
    connection still ends within the close timeout, the pending handler is cancelled, onclose runs."""
    app = Crow().websocket_limits(keepalive_interval=None, close_timeout=0.5, send_buffer_policy="wait")
    rec = Recorder(app)
    cancelled: list[bool] = []

    async def stream(conn: Connection) -> None:
        try:
            while conn.is_open:
                await conn.drained()
                conn.send_binary(b"b" * 65536)
        except CancelledError:
            cancelled.append(True)
            raise

    rec.rule.onopen(stream)
    port = serve(app)
    raw = yield connect_raw(port)
    yield raw.handshake("/ws")
    raw.transport.pauseProducing()  # reads nothing more
    (conn,) = rec.rule.connections
    yield wait_until(lambda: not conn.writable)
    raw.transport.write(F.encode(F.CLOSE, F.close_payload(1000, "stop")))
    yield wait_until(lambda: bool(rec.named("close")), 5)
    assert rec.named("close")[0][1] == 1000 and cancelled == [True]
    assert len(rec.rule.connections) == 0
    raw.transport.abortConnection()


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(bytes((0xC1, 0x80)) + b"\0\0\0\0", id="rsv-bit-1002"),
        pytest.param(F.encode(F.TEXT, b"\xc3\x28"), id="bad-utf8-1007"),
        pytest.param(bytes((0x82, 0xFF)) + (17 << 20).to_bytes(8, "big") + b"\0\0\0\0", id="too-big-1009"),
    ],
)
@pytest.mark.fast_paths("failing")
@pytest_twisted.inlineCallbacks
def test_a_failed_connection_delivers_its_replies_and_close_frame(serve: Any, bad: bytes) -> Iterator[Any]:
    """Failing a connection while the peer still sends: every reply already sent, then the close
    frame, reach the peer (no reset that would destroy them), as websockets' server does."""
    app = Crow().websocket_max_payload(16 << 20)
    app.route("/ws").websocket().onmessage(
        lambda conn, data, is_binary: conn.send_binary(data) if is_binary else conn.send_text(data)
    )
    port = serve(app)
    expected_code = {0xC1: 1002, 0x81: 1007, 0x82: 1009}[bad[0]]

    def client() -> tuple[list[Any], int | None]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(F.handshake("/ws"))
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            rest = head.split(b"\r\n\r\n", 1)[1]
            try:
                sock.sendall(
                    F.encode(F.TEXT, b"hello") + F.encode(F.BINARY, b"b" * 70_000) + bad + b"\x00" * 300_000
                )
            except OSError:
                pass  # the server may stop reading once it failed the connection
            data = rest
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    return [], None
                if not chunk:
                    break
                data += chunk
        frames, _ = F.decode_all(data)
        return frames, frames[-1].close_code if frames and frames[-1].opcode == F.CLOSE else None

    frames, code = yield within(deferToThread(client), 30)
    assert [f.opcode for f in frames] == [F.TEXT, F.BINARY, F.CLOSE]
    assert frames[1].payload == b"b" * 70_000
    assert code == expected_code


@pytest_twisted.inlineCallbacks
def test_when_closed_fires_after_onclose_with_a_close_code(serve: Any) -> Iterator[Any]:
    """conn.when_closed() fires once onclose has run (at once when asked later); onclose gets a CloseCode
    for a named code and the plain int for an application's own."""
    from crowtwist import CloseCode

    app = Crow()
    events: list[Any] = []
    opened: list[Connection] = []
    waits: list[Deferred[None]] = []

    def on_open(conn: Connection) -> None:
        opened.append(conn)
        waits.append(conn.when_closed().addCallback(lambda _: events.append("when_closed")))

    app.route("/ws").websocket().onopen(on_open).onclose(lambda conn, reason, code: events.append(code))
    port = serve(app)

    def client(code: int) -> None:
        with ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
            ws.close(code)

    yield within(deferToThread(client, 1000))
    yield within(waits[0])
    assert events == [1000, "when_closed"] and type(events[0]) is CloseCode
    late = opened[0].when_closed()
    assert late.called
    yield within(deferToThread(client, 4000))
    yield within(waits[1])
    assert events[2:] == [4000, "when_closed"] and type(events[2]) is int
