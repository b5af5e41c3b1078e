"""Broadcast and rooms in one process, over real sockets on 127.0.0.1, with autobahn's client."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel

from crowtwist import Connection, Crow
from crowtwist.websocket import _broadcast
from crowtwist.websocket._broadcast import room_channel, route_channel

from .clients import connect_autobahn, within


def chat_app() -> tuple[Crow, dict[str, list[Connection]]]:
    """``/chat``: a message is broadcast to the route; ``/room/<string>``: joins that room, publishes to it."""
    app = Crow()
    opened: dict[str, list[Connection]] = {"chat": [], "room": []}
    chat = app.route("/chat").websocket()
    chat.onopen(lambda conn: opened["chat"].append(conn))
    chat.onmessage(lambda conn, data, is_binary: chat.broadcast(data))

    def join(conn: Connection) -> None:
        conn.join(str(conn.params[0]))
        opened["room"].append(conn)

    room = app.route("/room/<string>").websocket()
    room.onopen(join)
    room.onmessage(lambda conn, data, is_binary: app.publish(str(conn.params[0]), data))
    return app, opened


@inlineCallbacks
def opened_clients(port: int, path: str, count: int, opened: list[Connection]) -> Any:
    clients = []
    for _ in range(count):
        clients.append((yield connect_autobahn(port, path)))
    while len(opened) < count:  # onopen runs in the turn after the 101
        yield within(deferLater(0))
    return clients


def deferLater(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)  # type: ignore[arg-type]


@pytest_twisted.inlineCallbacks
def test_broadcast_reaches_every_connection_of_the_route_once_the_sender_included(site_port: Any) -> Any:
    """``rule.broadcast`` sends to each open connection of its route once, the sender's too, and to no other route."""
    app, opened = chat_app()
    port = site_port(app)
    clients = yield opened_clients(port, "/chat", 3, opened["chat"])
    (other,) = yield opened_clients(port, "/room/lobby", 1, opened["room"])
    clients[1].sendMessage(b"hello", False)
    for client in clients:
        assert (yield client.next_message()) == (b"hello", False)
    clients[2].sendMessage(b"\x00\xff", True)
    for client in clients:
        assert (yield client.next_message()) == (b"\x00\xff", True)
        assert client.messages.pending == []  # once, not twice
    other.sendMessage(b"only the room", False)
    assert (yield other.next_message()) == (b"only the room", False)
    assert other.messages.pending == []


@pytest_twisted.inlineCallbacks
def test_rooms_are_app_wide_and_a_closed_connection_leaves_them(site_port: Any) -> Any:
    """A room spans routes; ``leave`` and closing take a connection out of it."""
    app, opened = chat_app()
    port = site_port(app)
    a, b = yield opened_clients(port, "/room/x", 2, opened["room"])
    (c,) = yield opened_clients(port, "/chat", 1, opened["chat"])
    conn_c = opened["chat"][0]
    conn_c.join("x")
    conn_c.join("y")
    assert conn_c.rooms == {"x", "y"}
    app.publish("x", "to x")
    for client in (a, b, c):
        assert (yield client.next_message()) == (b"to x", False)
    conn_c.leave("x")
    conn_c.leave("never joined")
    app.publish("x", b"again")
    for client in (a, b):
        assert (yield client.next_message()) == (b"again", True)
    app.publish("y", "to y")
    assert (yield c.next_message()) == (b"to y", False)
    assert c.messages.pending == []
    hub = app._websockets.hub  # (the test reads the app's hub to see membership)
    assert hub.members(room_channel("x")) == 2
    a.sendClose(1000)
    yield within(opened["room"][0].when_closed())
    assert hub.members(room_channel("x")) == 1
    assert opened["room"][0].rooms == frozenset()
    opened["room"][0].join("x")  # a closed connection joins nothing
    assert hub.members(room_channel("x")) == 1
    c.sendClose(1000)
    yield within(conn_c.when_closed())
    assert hub.channels() == [room_channel("x"), route_channel("/room/<string>")] or set(hub.channels()) == {
        room_channel("x"),
        route_channel("/room/<string>"),
    }


@pytest_twisted.inlineCallbacks
def test_a_frame_is_built_once_per_broadcast_whatever_the_audience(site_port: Any, monkeypatch: Any) -> Any:
    """One broadcast to many connections builds its frame once (as websockets' ``broadcast`` does)."""
    built = []
    real = _broadcast.data_header
    monkeypatch.setattr(_broadcast, "data_header", lambda *a: built.append(a) or real(*a))
    app, opened = chat_app()
    port = site_port(app)
    clients = yield opened_clients(port, "/chat", 8, opened["chat"])
    app.websocket_rules[0].broadcast("x" * 300)
    for client in clients:
        assert (yield client.next_message()) == (b"x" * 300, False)
    assert built == [(False, 300)]
    assert app._websockets.hub.delivered == 8


@pytest.mark.fast_paths("compression")
@pytest_twisted.inlineCallbacks
def test_a_compressed_connection_gets_broadcasts_through_its_own_deflate(site_port: Any) -> Any:
    """A connection with permessage-deflate (websockets' client) gets each broadcast, next to plain ones."""
    from websockets.sync.client import connect

    app, opened = chat_app()
    port = site_port(app)
    plain = yield connect_autobahn(port, "/chat")
    ready = threading.Event()
    go = threading.Event()

    def deflated() -> tuple[str | None, Any]:
        with connect(f"ws://127.0.0.1:{port}/chat", open_timeout=10) as ws:
            ready.set()
            go.wait(10)
            return ws.response.headers.get("Sec-WebSocket-Extensions"), ws.recv(timeout=10)

    client = deferToThread(deflated)
    yield deferToThread(ready.wait, 10)
    while len(opened["chat"]) < 2:
        yield within(deferLater(0))
    app.websocket_rules[0].broadcast("squeeze " * 1000)
    go.set()
    extensions, message = yield within(client)
    assert extensions is not None and "permessage-deflate" in extensions
    assert message == "squeeze " * 1000
    assert (yield plain.next_message()) == (b"squeeze " * 1000, False)


@pytest_twisted.inlineCallbacks
def test_a_slow_reader_is_skipped_counted_and_logged_once_and_stays_open(site_port: Any, logs: Any) -> Any:
    """A connection whose send buffer is over its bound misses broadcasts (counted, one warning) and is not closed."""
    app, opened = chat_app()
    app.websocket_limits(max_send_buffer=256 * 1024)
    port = site_port(app)
    slow, fast = yield opened_clients(port, "/chat", 2, opened["chat"])
    slow.transport.pauseProducing()  # reads nothing: the kernel's buffers fill, then ours
    slow_conn = opened["chat"][0]
    rule = app.websocket_rules[0]
    sent = 0
    chunk = b"z" * (64 * 1024)
    for _ in range(2000):  # bounded: loopback buffers hold a few MiB at most
        rule.broadcast(chunk)
        sent += 1
        got = yield fast.next_message()
        assert got == (chunk, True)
        if slow_conn.broadcasts_skipped >= 3:
            break
    assert slow_conn.broadcasts_skipped >= 3
    assert slow_conn.is_open
    warnings = [e for e in logs.at(LogLevel.warn) if "broadcasts skip it" in e.get("log_format", "")]
    assert len(warnings) == 1
    slow.transport.resumeProducing()
    received = 0
    for _ in range(sent - slow_conn.broadcasts_skipped):
        assert (yield slow.next_message()) == (chunk, True)
        received += 1
    rule.broadcast("after")
    assert (yield slow.next_message()) == (b"after", False)
    assert received == sent - slow_conn.broadcasts_skipped


@pytest_twisted.inlineCallbacks
def test_broadcast_and_publish_from_another_thread_are_delivered(site_port: Any) -> Any:
    """``rule.broadcast`` and ``app.publish`` called off the reactor thread reach the clients."""
    app, opened = chat_app()
    port = site_port(app)
    (client,) = yield opened_clients(port, "/room/t", 1, opened["room"])
    yield deferToThread(app.publish, "t", "from a thread")
    assert (yield client.next_message()) == (b"from a thread", False)
    rule = app.websocket_rules[1]
    yield deferToThread(rule.broadcast, b"route, from a thread")
    assert (yield client.next_message()) == (b"route, from a thread", True)
    yield deferToThread(opened["room"][0].join, "u")
    app.publish("u", "joined from a thread")
    assert (yield client.next_message()) == (b"joined from a thread", False)


def test_bad_rooms_and_messages_are_refused_with_a_clear_error() -> None:
    """Room names are non-empty ``str``; messages are ``str`` or ``bytes``; anything else raises at the call."""
    app, _ = chat_app()
    rule = app.websocket_rules[0]
    with pytest.raises(TypeError, match="str \\(text\\) or bytes \\(binary\\), not int"):
        rule.broadcast(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a room's name is a str, not int"):
        app.publish(5, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="may not be empty"):
        app.publish("", "x")
    with pytest.raises(ValueError, match="valid Unicode"):
        app.publish("\ud800", "x")
    with pytest.raises(TypeError, match="not dict"):
        app.publish("r", {"a": 1})  # type: ignore[arg-type]
    app.publish("nobody", "fine")  # a room with no one in it is not an error
    rule.broadcast("no connections yet")


def test_hub_delivery_of_relayed_messages_ignores_what_it_cannot_read() -> None:
    """What a relay brings that is not a crowtwist message (empty, unknown kind) is dropped."""
    hub = _broadcast.Hub()
    hub.deliver("room:x", b"")
    hub.deliver("room:x", b"\x07junk")
    hub.deliver("room:x", b"\x01nobody here")
    assert hub.delivered == 0
