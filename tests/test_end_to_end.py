"""End to end on 127.0.0.1: real sockets, clients we did not write (autobahn's, websockets'),
and raw sockets for clients that misbehave."""

from __future__ import annotations

import threading
import zlib
from typing import Any
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from crowtwist import Connection, Crow

from . import frames as F
from .clients import connect_autobahn, connect_raw, listen, within


@pytest.fixture(params=["twisted.web", "crow-site"])
def serve(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Serve an app (or any resource) on a random port; stop listening afterwards.

    Each test runs with the app's tree in a plain twisted.web ``Site`` and
    again on ``app.site()``, whose upgrade fast path then takes the handshakes.
    """
    ports: list[Any] = []

    def start(target: Crow | Resource) -> int:
        if isinstance(target, Crow) and request.param == "crow-site":
            port = reactor.listenTCP(0, target.site(), interface="127.0.0.1")  # type: ignore[attr-defined]
        else:
            port = listen(target.resource() if isinstance(target, Crow) else target)
        ports.append(port)
        return int(port.getHost().port)

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


def echo_app(**kwargs: Any) -> tuple[Crow, list[tuple[Any, ...]]]:
    app = Crow(**kwargs)
    log: list[tuple[Any, ...]] = []

    def on_message(conn: Connection, data: str | bytes, is_binary: bool) -> None:
        log.append(("message", data, is_binary))
        if isinstance(data, bytes):
            conn.send_binary(data)
        else:
            conn.send_text(data)

    (
        app.route("/echo/<int>")
        .websocket()
        .onopen(lambda conn: log.append(("open", conn.params)))
        .onmessage(on_message)
        .onerror(lambda conn, message: log.append(("error", message)))
        .onclose(lambda conn, reason, code: log.append(("close", reason, code)))
    )
    return app, log


def wait_until(predicate: Any, seconds: float = 10.0) -> Deferred[None]:
    """Poll the reactor (not sleep) until ``predicate()`` holds, bounded in time."""
    d: Deferred[None] = Deferred()
    deadline = reactor.seconds() + seconds  # type: ignore[attr-defined]

    def check() -> None:
        if predicate():
            d.callback(None)
        elif reactor.seconds() > deadline:  # type: ignore[attr-defined]
            d.errback(TimeoutError(f"condition not met within {seconds}s"))
        else:
            reactor.callLater(0.01, check)  # type: ignore[attr-defined]

    check()
    return d


@pytest_twisted.inlineCallbacks
def test_autobahn_client_round_trip(serve: Any) -> Iterator[Any]:
    """autobahn's client gets its text and binary echoed, and onclose sees its close code."""
    app, log = echo_app()
    port = serve(app)
    client = yield connect_autobahn(port, "/echo/7")
    client.sendMessage("hé".encode(), False)
    client.sendMessage(b"\x00\x01", True)
    assert (yield client.next_message()) == ("hé".encode(), False)
    assert (yield client.next_message()) == (b"\x00\x01", True)
    client.sendClose(4002, "bye")
    was_clean, code, _ = yield within(client.closed_with)
    assert was_clean
    yield wait_until(lambda: any(e[0] == "close" for e in log))
    assert log == [("open", (7,)), ("message", "hé", False), ("message", b"\x00\x01", True), ("close", "bye", 4002)]


@pytest.mark.fast_paths("compression")
@pytest_twisted.inlineCallbacks
def test_websockets_client_subprotocol_and_compression(serve: Any) -> Iterator[Any]:
    """The websockets library negotiates our subprotocol and permessage-deflate and round-trips 1 MiB."""
    app = Crow()
    (
        app.route("/ws")
        .websocket()
        .subprotocols(["chat.v2", "chat.v1"])
        .onmessage(lambda conn, data, is_binary: conn.send_text(f"{conn.get_subprotocol()}:{len(data)}"))
    )
    port = serve(app)

    def client() -> tuple[str | None, str | None, Any]:
        with ws_connect(f"ws://127.0.0.1:{port}/ws", subprotocols=["chat.v1", "chat.v2"], open_timeout=10) as ws:
            ws.send("x" * (1 << 20))
            reply = ws.recv(timeout=10)
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
            return ws.subprotocol, extensions, reply

    subprotocol, extensions, reply = yield within(deferToThread(client))
    assert subprotocol == "chat.v2"
    assert extensions is not None and "permessage-deflate" in extensions
    assert reply == f"chat.v2:{1 << 20}"


@pytest_twisted.inlineCallbacks
def test_max_payload_applies_after_decompression(serve: Any) -> Iterator[Any]:
    """A message that compresses small but inflates past max_payload is refused with 1009."""
    app = Crow()
    errors: list[str] = []
    (
        app.route("/ws")
        .websocket()
        .max_payload(100_000)
        .onmessage(lambda conn, data, is_binary: conn.send_text("got it"))
        .onerror(lambda conn, message: errors.append(message))
    )
    port = serve(app)
    payload = b"\0" * 1_000_000
    assert len(zlib.compress(payload)) < 100_000

    def client() -> int | None:
        with ws_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
            ws.send(payload)
            try:
                ws.recv(timeout=10)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None
        return None

    code = yield within(deferToThread(client))
    assert code == 1009
    yield wait_until(lambda: bool(errors))


@pytest.mark.parametrize("enforce", [False, True])
@pytest_twisted.inlineCallbacks
def test_unmasked_frames_by_mode(serve: Any, enforce: bool) -> Iterator[Any]:
    """A raw client's unmasked frame is echoed by default and refused with 1002 under enforcement."""
    app, log = echo_app(enforce_ws_spec=enforce)
    port = serve(app)
    client = yield connect_raw(port)
    response = yield client.handshake("/echo/1")
    assert response.startswith(b"HTTP/1.1 101")
    client.transport.write(F.encode(F.TEXT, b"naked", mask=False))
    frames = yield client.next_frames()
    if enforce:
        assert frames[0].opcode == F.CLOSE and frames[0].close_code == 1002
        client.transport.write(F.encode(F.CLOSE, F.close_payload(1002)))
        yield within(client.lost)
        yield wait_until(lambda: any(e[0] == "close" for e in log))
        assert ("error", "Client connection not masked.") in log
        assert not any(e[0] == "message" for e in log)
    else:
        assert (frames[0].opcode, frames[0].payload) == (F.TEXT, b"naked")
        client.transport.loseConnection()


@pytest.mark.fast_paths("close code")
@pytest_twisted.inlineCallbacks
def test_tcp_drop_is_1006_and_others_carry_on(serve: Any) -> Iterator[Any]:
    """A dropped socket gives onclose 1006 'uncleanly'; a raising handler closes only its own connection."""
    app, log = echo_app()
    app.route("/boom").websocket().onmessage(lambda conn, data, is_binary: 1 / 0)
    port = serve(app)
    raw = yield connect_raw(port)
    yield raw.handshake("/echo/2")
    raw.transport.abortConnection()
    yield wait_until(lambda: ("close", "uncleanly", 1006) in log)

    survivor = yield connect_autobahn(port, "/echo/3")
    doomed = yield connect_autobahn(port, "/boom")
    doomed.sendMessage(b"x", False)
    _, code, _ = yield within(doomed.closed_with)
    assert code == 1011
    survivor.sendMessage(b"still here", False)
    assert (yield survivor.next_message()) == (b"still here", False)
    survivor.sendClose(1000)
    yield within(survivor.closed_with)


@pytest_twisted.inlineCallbacks
def test_send_from_another_thread(serve: Any) -> Iterator[Any]:
    """conn.send_text from a worker thread reaches the client."""
    app = Crow()

    def on_message(conn: Connection, data: str | bytes, is_binary: bool) -> None:
        threading.Thread(target=conn.send_text, args=(f"from thread: {data}",)).start()

    app.route("/ws").websocket().onmessage(on_message)
    port = serve(app)
    client = yield connect_autobahn(port, "/ws")
    client.sendMessage(b"ping", False)
    assert (yield client.next_message()) == (b"from thread: ping", False)
    client.sendClose(1000)
    yield within(client.closed_with)


@pytest.mark.fast_paths("direct writes")
@pytest_twisted.inlineCallbacks
def test_slow_reader_backpressure(serve: Any) -> Iterator[Any]:
    """A client that stops reading makes drained() wait; once it reads, every message arrives in order."""
    app = Crow()
    state: dict[str, Any] = {"sent": 0, "paused": 0}
    chunk = b"y" * 65536
    total = 400  # 25 MiB, far beyond the socket buffers

    async def producer(conn: Connection) -> None:
        state["direct"] = conn._protocol is not None and conn._protocol._out.direct
        for i in range(total):
            if not conn.writable:
                state["paused"] += 1
            await conn.drained()
            if not conn.is_open:
                return
            conn.send_binary(i.to_bytes(4, "big") + chunk)
            state["sent"] = i + 1

    app.route("/ws").websocket().onmessage(lambda conn, data, is_binary: Deferred.fromCoroutine(producer(conn)))
    port = serve(app)
    client = yield connect_raw(port)
    yield client.handshake("/ws")
    client.transport.pauseProducing()
    client.transport.write(F.encode(F.TEXT, b"go"))
    yield wait_until(lambda: state["paused"] > 0)
    assert state["sent"] < total
    client.transport.resumeProducing()
    frames = yield client.next_frames(total)
    numbers = [int.from_bytes(f.payload[:4], "big") for f in frames[:total]]
    assert numbers == list(range(total))
    assert state["sent"] == total
    assert state["direct"]  # plain TCP: frames went to the socket directly
    client.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_mounted_in_an_existing_site(serve: Any) -> Iterator[Any]:
    """app.resource() under putChild serves WebSocket routes below the mount point."""
    app, _ = echo_app()
    root = Resource()
    root.putChild(b"api", app.resource())
    port = serve(root)
    client = yield connect_autobahn(port, "/api/echo/5")
    client.sendMessage(b"mounted", False)
    assert (yield client.next_message()) == (b"mounted", False)
    client.sendClose(1000)
    yield within(client.closed_with)


@pytest_twisted.inlineCallbacks
def test_rejected_upgrade_over_the_wire(serve: Any) -> Iterator[Any]:
    """onaccept's Response reaches a real client with its status, and nothing opens."""
    from crowtwist import Response

    app, log = echo_app()
    app.websocket_rules[0].onaccept(lambda req: Response(403, "nope"))
    port = serve(app)
    client = yield connect_raw(port)
    response = yield client.handshake("/echo/1")
    assert response.startswith(b"HTTP/1.1 403")
    assert log == []
    client.transport.loseConnection()


def counting_coalescer(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A coalescer that counts the replies it holds, and counts any two connections' reads within a second as busy."""
    from crowtwist.websocket import _protocol as protocol_module
    from crowtwist.websocket._coalesce import Coalescer

    class Counting(Coalescer):
        holds = 0

        def hold(self, corked: Any, call_later: Any) -> None:
            self.holds += 1
            super().hold(corked, call_later)

    coalescer = Counting(busy_gap=1.0)
    monkeypatch.setattr(protocol_module, "_coalescer", coalescer)
    return coalescer


@inlineCallbacks
def echo_clients(serve: Any, count: int) -> Iterator[Any]:
    """``count`` autobahn clients connected to an echo app served by ``serve``."""
    app, _ = echo_app()
    port = serve(app)
    clients = yield gatherResults([connect_autobahn(port, f"/echo/{i}") for i in range(count)])
    return clients


@inlineCallbacks
def close_all(clients: list[Any]) -> Iterator[Any]:
    """Close every client and wait for each close handshake."""
    for client in clients:
        client.sendClose(1000)
    yield gatherResults([within(client.closed_with) for client in clients])


@pytest.mark.fast_paths("direct writes")
@pytest_twisted.inlineCallbacks
def test_replies_held_in_busy_turns_all_arrive_in_order(serve: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """With many connections sending at once, replies held to the end of each reactor turn arrive complete and in order."""
    coalescer = counting_coalescer(monkeypatch)
    clients = yield echo_clients(serve, 20)
    for client in clients:
        for j in range(20):
            client.sendMessage(f"{j}".encode(), False)
    for client in clients:
        received = []
        for _ in range(20):
            payload, _binary = yield client.next_message()
            received.append(payload)
        assert received == [f"{j}".encode() for j in range(20)]
    assert coalescer.holds > 0
    yield close_all(clients)


@pytest_twisted.inlineCallbacks
def test_large_replies_are_not_held(serve: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Replies of 16 KiB or more go out at once even in a busy turn: holding them would idle the peer."""
    coalescer = counting_coalescer(monkeypatch)
    clients = yield echo_clients(serve, 4)
    big = b"x" * (20 * 1024)
    for client in clients:
        client.sendMessage(big, True)
    for client in clients:
        assert (yield client.next_message()) == (big, True)
    assert coalescer.holds == 0
    yield close_all(clients)


@pytest_twisted.inlineCallbacks
def test_app_site_upgrades_without_a_twisted_web_request() -> Iterator[Any]:
    """Over TCP, app.site() takes a websockets client's upgrade on its fast path (no Request) and echoes."""
    app, log = echo_app()
    site = app.site()
    requests: list[Any] = []
    made = site.requestFactory

    def counting(*args: Any, **kwargs: Any) -> Any:
        requests.append(args)
        return made(*args, **kwargs)

    site.requestFactory = counting
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]

    def client() -> str:
        with ws_connect(f"ws://127.0.0.1:{port.getHost().port}/echo/3", open_timeout=10, compression=None) as ws:
            ws.send("over the fast path")
            return str(ws.recv(timeout=10))

    try:
        assert (yield within(deferToThread(client))) == "over the fast path"
    finally:
        yield port.stopListening()
    assert requests == []
    assert log[0] == ("open", (3,))
