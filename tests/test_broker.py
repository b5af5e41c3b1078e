"""Rooms and broadcasts across processes through a real ``redis-server`` on 127.0.0.1.

In-process: two apps (as two machines would be) sharing one Redis, with
autobahn's client.  Then two ``twistd crow --broker`` processes, with
websockets' client, through a Redis restart.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import signal
import time
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent
from websockets.sync.client import connect as ws_connect

from crowtwist import Connection, Crow
from crowtwist import _broker
from crowtwist._broker import BrokerURL, parse_broker_url

from .clients import connect_autobahn, within
from .proc import Server, free_port, twistd
from .redis_server import RedisServer


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def room_app(url: str) -> tuple[Crow, list[Connection]]:
    app = Crow()
    opened: list[Connection] = []

    def joined(conn: Connection) -> None:
        conn.join(str(conn.params[0]))
        opened.append(conn)

    room = app.route("/room/<string>").websocket()
    room.onopen(joined)
    room.onmessage(lambda conn, data, is_binary: app.publish(str(conn.params[0]), data))
    everyone = app.route("/all").websocket()
    everyone.onopen(lambda conn: opened.append(conn))
    everyone.onmessage(lambda conn, data, is_binary: everyone.broadcast(data))
    app.broker(url)
    return app, opened


@pytest.fixture
def two_apps(redis: RedisServer) -> Iterator[Any]:
    """Two apps, each on its own port, sharing ``redis``; brokers and ports stopped afterwards."""
    started: list[tuple[Crow, Any]] = []

    def start() -> list[tuple[Crow, list[Connection], int]]:
        result = []
        for _ in range(2):
            app, opened = room_app(redis.url)
            port = reactor.listenTCP(0, app.site(), interface="127.0.0.1")  # type: ignore[attr-defined]
            app.broker_client.start()  # type: ignore[union-attr]
            started.append((app, port))
            result.append((app, opened, port.getHost().port))
        return result

    yield start
    for app, port in started:
        pytest_twisted.blockon(port.stopListening())
        pytest_twisted.blockon(app.broker_client.stop())  # type: ignore[union-attr]


@inlineCallbacks
def until(condition: Any, what: str, seconds: float = 10.0) -> Any:
    """Poll ``condition()`` each reactor turn (bounded) until it is true."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield deferLater(reactor, 0.01, lambda: None)  # type: ignore[arg-type]


def subscribers(redis: RedisServer, channel: str) -> int:
    reply = redis.command("PUBSUB", "NUMSUB", channel)
    return int(reply.rsplit(b":", 1)[1].split(b"\r\n")[0])


@pytest_twisted.inlineCallbacks
def test_a_room_reaches_both_processes_each_connection_once(two_apps: Any, redis: RedisServer) -> Any:
    """A message published in one app reaches the room's connections in both, each exactly once, the sender's too."""
    (app1, opened1, port1), (app2, opened2, port2) = two_apps()
    yield within(app1.broker_client.when_up())
    yield within(app2.broker_client.when_up())
    a = yield connect_autobahn(port1, "/room/lobby")
    b = yield connect_autobahn(port2, "/room/lobby")
    c = yield connect_autobahn(port2, "/room/elsewhere")
    yield until(lambda: subscribers(redis, "crowtwist:0:room:lobby") == 2, "both subscriptions")
    a.sendMessage(b"from one", False)
    assert (yield a.next_message()) == (b"from one", False)
    assert (yield b.next_message()) == (b"from one", False)
    b.sendMessage(b"\x01\x02", True)
    assert (yield a.next_message()) == (b"\x01\x02", True)
    assert (yield b.next_message()) == (b"\x01\x02", True)
    c.sendMessage(b"marker", False)
    assert (yield c.next_message()) == (b"marker", False)
    for client in (a, b, c):
        assert client.messages.pending == []
    assert app1.broker_client.published == 1 and app2.broker_client.published == 2


@pytest_twisted.inlineCallbacks
def test_a_route_broadcast_reaches_both_processes_in_the_publishers_order(two_apps: Any, redis: RedisServer) -> Any:
    """``rule.broadcast`` reaches the route's connections in every process, one publisher's messages in order."""
    (app1, opened1, port1), (app2, opened2, port2) = two_apps()
    yield within(app1.broker_client.when_up())
    yield within(app2.broker_client.when_up())
    a = yield connect_autobahn(port1, "/all")
    b = yield connect_autobahn(port2, "/all")
    yield until(lambda: subscribers(redis, "crowtwist:0:route:/all") == 2, "both subscriptions")
    rule = app1.websocket_rules[1]
    for n in range(200):
        rule.broadcast(str(n))
    for client in (a, b):
        got = []
        for _ in range(200):
            got.append((yield client.next_message())[0])
        assert got == [str(n).encode() for n in range(200)]


@pytest_twisted.inlineCallbacks
def test_redis_going_away_keeps_local_delivery_and_comes_back(two_apps: Any, redis: RedisServer, logs: Any) -> Any:
    """Through a Redis restart: connections stay open, delivery stays local meanwhile, and resumes everywhere after."""
    (app1, opened1, port1), (app2, opened2, port2) = two_apps()
    yield within(app1.broker_client.when_up())
    yield within(app2.broker_client.when_up())
    a = yield connect_autobahn(port1, "/room/r")
    b = yield connect_autobahn(port2, "/room/r")
    yield until(lambda: subscribers(redis, "crowtwist:0:room:r") == 2, "both subscriptions")
    redis.stop()
    yield until(lambda: not app1.broker_client.up and not app2.broker_client.up, "both brokers to see Redis gone")
    a.sendMessage(b"during the outage", False)
    assert (yield a.next_message()) == (b"during the outage", False)  # local delivery goes on
    assert app1.broker_client.dropped == 1
    redis.start()
    yield within(app1.broker_client.when_up(), 30)
    yield within(app2.broker_client.when_up(), 30)
    yield until(lambda: subscribers(redis, "crowtwist:0:room:r") == 2, "the rooms subscribed again")
    b.sendMessage(b"after", False)
    assert (yield a.next_message()) == (b"after", False)
    assert (yield b.next_message()) == (b"after", False)
    assert b.messages.pending == []  # the outage's message never reached the other process
    assert opened1[0].is_open and opened2[0].is_open
    lost = [e for e in logs.at(LogLevel.warn) if "lost; reconnecting" in formatEvent(e)]
    assert len(lost) == 2  # once per outage per process, not once per retry
    back = [e for e in logs.at(LogLevel.info) if "is back after" in e.get("log_format", "")]
    assert len(back) == 2


@pytest_twisted.inlineCallbacks
def test_a_redis_that_stops_answering_is_dropped_and_found_again(
    two_apps: Any, redis: RedisServer, monkeypatch: Any
) -> Any:
    """A Redis that keeps its sockets open but answers nothing (SIGSTOP) is noticed by PING, and found again."""
    monkeypatch.setattr(_broker, "_HEALTH_INTERVAL", 0.2)
    monkeypatch.setattr(_broker, "_HEALTH_TIMEOUT", 0.3)
    (app1, opened1, port1), (app2, opened2, port2) = two_apps()
    yield within(app1.broker_client.when_up())
    yield within(app2.broker_client.when_up())
    a = yield connect_autobahn(port1, "/room/s")
    b = yield connect_autobahn(port2, "/room/s")
    yield until(lambda: subscribers(redis, "crowtwist:0:room:s") == 2, "both subscriptions")
    assert redis.process is not None
    redis.process.send_signal(signal.SIGSTOP)
    try:
        yield until(lambda: not app1.broker_client.up and not app2.broker_client.up, "the silence to be noticed")
        a.sendMessage(b"while redis sleeps", False)
        assert (yield a.next_message()) == (b"while redis sleeps", False)
    finally:
        redis.process.send_signal(signal.SIGCONT)
    yield within(app1.broker_client.when_up(), 30)
    yield within(app2.broker_client.when_up(), 30)
    yield until(lambda: subscribers(redis, "crowtwist:0:room:s") >= 2, "the room subscribed again")
    b.sendMessage(b"awake", False)
    assert (yield a.next_message()) == (b"awake", False)
    assert (yield b.next_message()) == (b"awake", False)
    assert b.messages.pending == []


@pytest_twisted.inlineCallbacks
def test_a_burst_larger_than_the_bound_to_a_healthy_redis_is_delivered_everywhere(
    two_apps: Any, redis: RedisServer, monkeypatch: Any
) -> Any:
    """Many MiB published in one turn to a Redis that answers are delivered in both processes, none dropped."""
    monkeypatch.setattr(_broker, "_MAX_HELD", 1024 * 1024)
    (app1, opened1, port1), (app2, opened2, port2) = two_apps()
    yield within(app1.broker_client.when_up())
    yield within(app2.broker_client.when_up())
    a = yield connect_autobahn(port1, "/room/burst")
    b = yield connect_autobahn(port2, "/room/burst")
    yield until(lambda: subscribers(redis, "crowtwist:0:room:burst") == 2, "both subscriptions")
    chunk = b"q" * (100 * 1024)
    for n in range(60):  # 6 MiB in one turn
        app1.publish("burst", bytes([n]) + chunk)
    for client in (a, b):
        for n in range(60):
            assert (yield client.next_message()) == (bytes([n]) + chunk, True)
    assert app1.broker_client.dropped == 0 and app1.broker_client.up


@pytest_twisted.inlineCallbacks
def test_publishes_a_stalled_redis_does_not_take_are_bounded_then_local(
    two_apps: Any, redis: RedisServer, monkeypatch: Any, logs: Any
) -> Any:
    """Past the bound of what waits for a stalled Redis, publishes go to this process's connections only (one warning)."""
    monkeypatch.setattr(_broker, "_MAX_HELD", 1024 * 1024)
    monkeypatch.setattr(_broker, "_SLOW", 0.1)
    monkeypatch.setattr(_broker, "_STALL", 30.0)  # (so that the bound is what trips)
    (app1, opened1, port1), _ = two_apps()
    yield within(app1.broker_client.when_up())
    a = yield connect_autobahn(port1, "/room/big")
    yield until(lambda: subscribers(redis, "crowtwist:0:room:big") == 1, "the subscription")
    assert redis.process is not None
    redis.process.send_signal(signal.SIGSTOP)
    chunk = b"m" * (256 * 1024)
    try:
        for _ in range(400):  # bounded: kernel buffers on loopback take a few MiB, then the transport pauses
            app1.publish("big", chunk)
            if app1.broker_client.dropped:
                break
            yield deferLater(reactor, 0.005, lambda: None)  # (the transport writes, and may pause us)
        assert app1.broker_client.dropped == 1
        assert (yield a.next_message()) == (chunk, True)  # the one over the bound, delivered here
    finally:
        redis.process.send_signal(signal.SIGCONT)
    warned = [e for e in logs.at(LogLevel.warn) if "not taking publishes" in formatEvent(e)]
    assert len(warned) == 1


@pytest_twisted.inlineCallbacks
def test_a_password_in_the_url_is_used(tmp_path: Path) -> Any:
    """``redis://:password@host`` authenticates; a wrong password is one error and local delivery goes on."""
    server = RedisServer(tmp_path, password="s3cret/with:odd@chars").start()
    try:
        good, _ = room_app(f"redis://:{'s3cret%2Fwith%3Aodd%40chars'}@127.0.0.1:{server.port}/0")
        good.broker_client.start()
        yield within(good.broker_client.when_up())
        yield good.broker_client.stop()
        assert not good.broker_client.up
    finally:
        server.stop()


@pytest_twisted.inlineCallbacks
def test_a_refused_password_is_logged_once_and_not_retried(tmp_path: Path, logs: Any) -> Any:
    """Redis refusing AUTH is logged as an error, not retried, and the app delivers locally."""
    server = RedisServer(tmp_path, password="right").start()
    try:
        app, _ = room_app(f"redis://:wrong@127.0.0.1:{server.port}")
        app.broker_client.start()
        yield until(lambda: any("not reconnecting" in e.get("log_format", "") for e in logs.at(LogLevel.error)),
                    "the refusal to be logged")
        assert not app.broker_client.up
        assert app.broker_client.publish("room:x", b"\x01x") is False
        said = [formatEvent(e) for e in logs.events if "Redis" in formatEvent(e)]
        assert len(said) == 1, said  # one line, and no "closed the connection" after it
        yield app.broker_client.stop()
        # no password where one is needed: Redis's NOAUTH is what the log says
        bare, _ = room_app(f"redis://127.0.0.1:{server.port}")
        bare.broker_client.start()
        yield until(lambda: any("NOAUTH" in formatEvent(e) for e in logs.at(LogLevel.error)), "NOAUTH in the log")
        yield bare.broker_client.stop()
    finally:
        server.stop()


@pytest_twisted.inlineCallbacks
def test_an_unreachable_redis_is_logged_once_and_tried_again_until_it_answers(tmp_path: Path, logs: Any) -> Any:
    """Redis down at start: one warning, retries with backoff, delivery local meanwhile, up once it listens."""
    port = free_port()
    app, opened = room_app(f"redis://127.0.0.1:{port}/0")
    listening = reactor.listenTCP(0, app.site(), interface="127.0.0.1")  # type: ignore[attr-defined]
    broker = app.broker_client
    assert broker is not None and "down" in repr(broker)
    broker.start()
    broker.start()  # (a second start is a no-op)
    try:
        yield until(lambda: any("unreachable" in formatEvent(e) for e in logs.at(LogLevel.warn)), "the warning")
        a = yield connect_autobahn(listening.getHost().port, "/room/early")
        a.sendMessage(b"local while down", False)
        assert (yield a.next_message()) == (b"local while down", False)
        server = RedisServer(tmp_path, port=port).start()
        try:
            yield within(broker.when_up(), 30)
            assert "up" in repr(broker)
            a.sendMessage(b"through redis", False)
            assert (yield a.next_message()) == (b"through redis", False)
            assert broker.received == 1
        finally:
            server.stop()
        unreachable = [e for e in logs.at(LogLevel.warn) if "unreachable" in formatEvent(e)]
        assert len(unreachable) == 1
    finally:
        yield listening.stopListening()
        yield broker.stop()


@pytest_twisted.inlineCallbacks
def test_stopping_while_redis_is_away_cancels_the_retries() -> Any:
    """A broker stopped during an outage stops trying: no connection attempt is left behind."""
    app, _ = room_app(f"redis://127.0.0.1:{free_port()}/0")
    broker = app.broker_client
    broker.start()
    yield deferLater(reactor, 0, lambda: None)  # (one turn: the first attempt is refused)
    yield within(broker.stop())
    assert not broker.up
    assert broker.publish("room:x", b"\x01x") is False


@pytest_twisted.inlineCallbacks
def test_a_room_joined_while_the_broker_resubscribes_is_subscribed_too(two_apps: Any, redis: RedisServer) -> Any:
    """A join in the window between Redis answering again and the old rooms' confirmation is not lost."""
    (app1, opened1, port1), (app2, opened2, port2) = two_apps()
    yield within(app1.broker_client.when_up())
    yield within(app2.broker_client.when_up())
    b = yield connect_autobahn(port2, "/room/old")
    yield until(lambda: opened2, "the connection to open")
    broker = app2.broker_client
    real_ready = broker.ready
    joined = []

    def ready(protocol: Any, subscriber: bool) -> None:
        real_ready(protocol, subscriber)
        if subscriber and not joined:  # the SUBSCRIBEs for the old rooms are out, not confirmed
            assert not broker.up
            opened2[0].join("new")
            joined.append(True)

    broker.ready = ready  # type: ignore[method-assign]
    redis.restart()
    yield until(lambda: not broker.up, "the restart to be noticed")
    yield within(broker.when_up(), 30)
    yield within(app1.broker_client.when_up(), 30)
    assert joined
    yield until(lambda: subscribers(redis, "crowtwist:0:room:new") == 1, "the new room's subscription")
    app1.publish("new", "to the new room")
    assert (yield b.next_message()) == (b"to the new room", False)


@pytest_twisted.inlineCallbacks
def test_an_acl_without_channels_is_an_error_and_delivery_stays_local(tmp_path: Path, logs: Any) -> Any:
    """A Redis user refused SUBSCRIBE (NOPERM) is logged as an error once; messages still reach this process."""
    server = RedisServer(tmp_path).start()
    try:
        server.command("ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "resetchannels")
        app, opened = room_app(f"redis://app:pw@127.0.0.1:{server.port}/0")
        port = reactor.listenTCP(0, app.site(), interface="127.0.0.1")  # type: ignore[attr-defined]
        a = yield connect_autobahn(port.getHost().port, "/room/acl")
        yield until(lambda: opened, "the connection to open")
        app.broker_client.start()
        yield until(lambda: any("refused SUBSCRIBE" in formatEvent(e) for e in logs.at(LogLevel.error)),
                    "the refusal to be logged")
        assert not app.broker_client.up
        a.sendMessage(b"still here", False)
        assert (yield a.next_message()) == (b"still here", False)
        refusals = [e for e in logs.at(LogLevel.error) if "refused SUBSCRIBE" in formatEvent(e)]
        assert len(refusals) == 1 and "NOPERM" in formatEvent(refusals[0])
        assert not any("connected" in formatEvent(e) for e in logs.at(LogLevel.info))
        yield port.stopListening()
        yield app.broker_client.stop()
    finally:
        server.stop()


@pytest_twisted.inlineCallbacks
def test_a_refused_publish_is_delivered_here_and_a_refused_join_is_an_error(tmp_path: Path, logs: Any) -> Any:
    """Redis refusing PUBLISH is one error, and every refused message still reaches this process, in order;
    a refused SUBSCRIBE for a later join is an error too, and delivery stays local."""
    server = RedisServer(tmp_path).start()
    try:
        # may subscribe to route channels only, may not publish
        server.command("ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "-publish", "resetchannels",
                       "&crowtwist:0:route:*")
        app, opened = room_app(f"redis://app:pw@127.0.0.1:{server.port}/0")
        port = reactor.listenTCP(0, app.site(), interface="127.0.0.1")  # type: ignore[attr-defined]
        everyone = yield connect_autobahn(port.getHost().port, "/all")
        yield until(lambda: opened, "the connection to open")
        app.broker_client.start()
        yield within(app.broker_client.when_up())
        rule = app.websocket_rules[1]
        for n in range(100):  # a burst: the refusals come back after the rest were sent
            rule.broadcast(str(n))
        for n in range(100):
            assert (yield everyone.next_message()) == (str(n).encode(), False)  # every one, in order, here
        rule.broadcast("later")
        assert (yield everyone.next_message()) == (b"later", False)
        errors = [formatEvent(e) for e in logs.at(LogLevel.error)]
        assert len([e for e in errors if "refused PUBLISH" in e]) == 1 and "NOPERM" in errors[0], errors
        assert app.broker_client.up  # (subscribing is allowed: other processes' messages still arrive)
        room = yield connect_autobahn(port.getHost().port, "/room/forbidden")
        yield until(lambda: any("refused SUBSCRIBE" in formatEvent(e) for e in logs.at(LogLevel.error)),
                    "the join's refusal")
        room.sendMessage(b"local", False)
        assert (yield room.next_message()) == (b"local", False)
        yield port.stopListening()
        yield app.broker_client.stop()
    finally:
        server.stop()


def test_a_missing_redis_client_is_one_clear_line(monkeypatch: Any, capsys: Any) -> None:
    """Without txredisapi, ``app.broker`` and ``--broker`` say to install ``crowtwist[redis]``."""
    import importlib.util

    from crowtwist.tap import Options

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "txredisapi" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'crowtwist\[redis\]'"):
        Crow().broker("redis://localhost")
    with pytest.raises(SystemExit, match=r"twistd crow: --broker: .*pip install 'crowtwist\[redis\]'"):
        Options().parseOptions(["--routes", "tests.broker_routes", "--broker", "redis://localhost"])
    with pytest.raises(SystemExit, match="twistd crow: --broker: .*scheme"):
        monkeypatch.undo()
        Options().parseOptions(["--routes", "tests.broker_routes", "--broker", "http://localhost"])


@pytest_twisted.inlineCallbacks
def test_an_unanswered_publish_sends_delivery_local_within_the_stall_bound_and_in_order(
    two_apps: Any, redis: RedisServer, monkeypatch: Any
) -> Any:
    """A PUBLISH unanswered past the stall bound makes delivery local; what Redis held never arrives after it."""
    monkeypatch.setattr(_broker, "_STALL", 0.3)
    (app1, opened1, port1), _ = two_apps()
    yield within(app1.broker_client.when_up())
    a = yield connect_autobahn(port1, "/room/order")
    yield until(lambda: subscribers(redis, "crowtwist:0:room:order") == 1, "the subscription")
    assert redis.process is not None
    redis.process.send_signal(signal.SIGSTOP)
    sent = 0
    try:
        for _ in range(200):  # bounded: ~0.3 s of 20 ms steps before the stall is noticed
            app1.publish("order", str(sent))
            sent += 1
            if app1.broker_client.dropped:
                break
            yield deferLater(reactor, 0.02, lambda: None)  # (time must pass for a stall to be one)
        assert app1.broker_client.dropped == 1 and not app1.broker_client.up
        local = yield a.next_message()  # the first message after the stall, delivered here
        assert local == (str(sent - 1).encode(), False)
    finally:
        redis.process.send_signal(signal.SIGCONT)
    yield within(app1.broker_client.when_up(), 30)
    yield until(lambda: subscribers(redis, "crowtwist:0:room:order") == 1, "the subscription again")
    app1.publish("order", "after")
    assert (yield a.next_message()) == (b"after", False)  # not one of those Redis held while stopped
    assert a.messages.pending == []


@pytest_twisted.inlineCallbacks
def test_a_server_that_accepts_and_closes_gets_backoff_and_one_warning(logs: Any) -> Any:
    """Reconnecting to something that accepts and closes at once backs off (e-fold) and warns once."""
    from twisted.internet.protocol import Factory, Protocol

    accepted = []

    class Slam(Protocol):
        def connectionMade(self) -> None:
            accepted.append(time.monotonic())
            self.transport.loseConnection()  # type: ignore[union-attr]

    listening = reactor.listenTCP(0, Factory.forProtocol(Slam), interface="127.0.0.1")  # type: ignore[attr-defined]
    app, _ = room_app(f"redis://127.0.0.1:{listening.getHost().port}/0")
    app.broker_client.start()
    started = time.monotonic()
    try:
        yield until(lambda: time.monotonic() - started > 2.5, "2.5 s of attempts", seconds=10)
        # two links, each: 0, ~0.2, ~0.74, ~2.2 s (±15 %): at most 4 attempts each
        assert 2 <= len(accepted) <= 8, accepted
        warnings = [e for e in logs.at(LogLevel.warn) if "Redis broker" in formatEvent(e)]
        assert len(warnings) == 1, [formatEvent(e) for e in warnings]
        assert not app.broker_client.up
    finally:
        yield app.broker_client.stop()
        yield listening.stopListening()


@pytest_twisted.inlineCallbacks
def test_rediss_to_a_plain_redis_never_counts_as_connected(redis: RedisServer, logs: Any) -> Any:
    """``rediss://`` to a server without TLS is not "connected": one warning, and delivery stays local meanwhile."""
    app, opened = room_app(f"rediss://127.0.0.1:{redis.port}/0?ssl_cert_reqs=none")
    port = reactor.listenTCP(0, app.site(), interface="127.0.0.1")  # type: ignore[attr-defined]
    app.broker_client.start()
    try:
        a = yield connect_autobahn(port.getHost().port, "/room/x")
        a.sendMessage(b"local", False)
        assert (yield a.next_message()) == (b"local", False)
        yield until(lambda: any("Redis broker" in formatEvent(e) for e in logs.at(LogLevel.warn)), "the warning")
        assert not app.broker_client.up
        assert not any("connected" in formatEvent(e) for e in logs.at(LogLevel.info))
    finally:
        yield port.stopListening()
        yield app.broker_client.stop()


def make_certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest_twisted.inlineCallbacks
def test_rediss_with_a_private_ca_and_a_password(tmp_path: Path) -> Any:
    """``rediss://:password@host/0?ssl_ca_certs=ca.pem`` connects over TLS, verifying the server against that CA."""
    server = RedisServer(tmp_path, password="pw", tls=make_certificate(tmp_path)).start()
    try:
        app, opened = room_app(server.url)
        port = reactor.listenTCP(0, app.site(), interface="127.0.0.1")  # type: ignore[attr-defined]
        a = yield connect_autobahn(port.getHost().port, "/room/tls")
        yield until(lambda: opened, "the connection to open")
        # Started after the join, so "up" includes Redis's confirmation of the room's subscription.
        app.broker_client.start()
        yield within(app.broker_client.when_up())
        a.sendMessage(b"over tls", False)
        assert (yield a.next_message()) == (b"over tls", False)
        assert app.broker_client.received == 1
        yield port.stopListening()
        yield app.broker_client.stop()
        # ssl_cert_reqs=none: encrypted without verifying (no CA given)
        unverified, _ = room_app(f"rediss://:pw@127.0.0.1:{server.port}/0?ssl_cert_reqs=none")
        unverified.broker_client.start()
        yield within(unverified.broker_client.when_up())
        yield unverified.broker_client.stop()
    finally:
        server.stop()


def test_broker_urls_are_parsed_or_refused_with_a_reason() -> None:
    """Redis URLs give host, port, db, credentials and TLS options; malformed ones say what is wrong."""
    assert parse_broker_url("redis://localhost") == BrokerURL("localhost", 6379, 0, None, None, False, None, True)
    url = parse_broker_url("rediss://user:p%40ss@[::1]:6380/3?ssl_cert_reqs=none")
    assert (url.host, url.port, url.db, url.username, url.password, url.tls, url.verify) == (
        "::1", 6380, 3, "user", "p@ss", True, False)
    assert str(url) == "rediss://user:***@[::1]:6380/3"
    assert parse_broker_url("redis://h/?db=2").db == 2
    for bad, reason in [
        ("http://h", "scheme is redis:// or rediss://"),
        ("redis://h:99999", "port is not a number"),
        ("redis:///0", "names no host"),
        ("redis://h/zero", "database number"),
        ("redis://h?timeout=1", "unknown parameter"),
        ("redis://h?ssl_cert_reqs=none", "need rediss://"),
        ("rediss://h?ssl_cert_reqs=maybe", "'required' or 'none'"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_broker_url(bad)
    with pytest.raises(TypeError):
        parse_broker_url(b"redis://h")  # type: ignore[arg-type]
    app = Crow()
    with pytest.raises(ValueError, match="scheme"):
        app.broker("memcached://h")
    app.broker("redis://h")
    app.broker(None)
    assert app.broker_client is None


# Real processes: two twistd crow servers sharing one Redis.


def ws_recv(ws: Any) -> Any:
    return ws.recv(timeout=10)


def test_two_twistd_processes_share_rooms_and_broadcasts_through_redis_restarts(redis: RedisServer) -> None:
    """Two ``twistd crow --broker`` processes: a client on one gets what a client on the other sent,
    per room and per route, and again after Redis restarts."""
    ports = [free_port(), free_port()]
    servers = [
        Server(twistd("--routes", "tests.broker_routes", "--port", str(port), "--broker", redis.url))
        for port in ports
    ]
    with servers[0], servers[1]:
        for server, port in zip(servers, ports):
            server.wait_tcp(port)
        wait_for_subscribers(redis, "crowtwist:0:route:/all", 0)  # (Redis answers)
        with contextlib.ExitStack() as clients:
            a, b, x, y = (
                clients.enter_context(ws_connect(f"ws://127.0.0.1:{port}{path}", open_timeout=10))
                for port, path in [(ports[0], "/room/blue"), (ports[1], "/room/blue"), (ports[0], "/all"),
                                   (ports[1], "/all")]
            )
            wait_for_subscribers(redis, "crowtwist:0:room:blue", 2)
            wait_for_subscribers(redis, "crowtwist:0:route:/all", 2)
            wait_for_clients(redis, 4)  # both processes' publishers too
            a.send("hello blue")
            assert ws_recv(b) == "hello blue" and ws_recv(a) == "hello blue"
            y.send(b"\x00to all")
            assert ws_recv(x) == b"\x00to all" and ws_recv(y) == b"\x00to all"
            redis.restart()
            wait_for_subscribers(redis, "crowtwist:0:room:blue", 2, seconds=30)
            wait_for_subscribers(redis, "crowtwist:0:route:/all", 2, seconds=30)
            wait_for_clients(redis, 4)  # the publishers are back too
            b.send("after the restart")
            assert ws_recv(a) == "after the restart" and ws_recv(b) == "after the restart"
            x.send("all, after")
            assert ws_recv(y) == "all, after" and ws_recv(x) == "all, after"
        outputs = [server.stop() for server in servers]
    for server, output in zip(servers, outputs):
        assert server.process.returncode == 0, output
        assert output.count("lost; reconnecting") == 1, output
        assert "is back after" in output, output


def test_workers_share_rooms_through_the_broker(redis: RedisServer) -> None:
    """Under ``--workers 2 --broker``, a room's message reaches its connections in both workers, each once."""
    port = free_port()
    with Server(twistd("--routes", "tests.broker_routes", "--port", str(port), "--workers", "2",
                       "--broker", redis.url)) as server:
        server.wait_tcp(port)
        with contextlib.ExitStack() as clients:
            by_pid: dict[int, Any] = {}
            for _ in range(64):  # bounded: the kernel spreads connections over both workers' sockets
                ws = clients.enter_context(ws_connect(f"ws://127.0.0.1:{port}/whoami", open_timeout=10))
                pid = int(ws_recv(ws))
                if pid in by_pid:
                    ws.close()
                else:
                    by_pid[pid] = ws
                if len(by_pid) == 2:
                    break
            assert len(by_pid) == 2
            wait_for_subscribers(redis, "crowtwist:0:room:w", 2)
            wait_for_clients(redis, 4)  # both workers' publishers too
            first, second = by_pid.values()
            first.send("across workers")
            assert ws_recv(second) == "across workers" and ws_recv(first) == "across workers"
            second.send(b"back")
            assert ws_recv(first) == b"back" and ws_recv(second) == b"back"
        output = server.stop()
    assert server.process.returncode == 0, output
    assert "without --broker" not in output


def wait_for_subscribers(redis: RedisServer, channel: str, count: int, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if subscribers(redis, channel) >= count:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{channel} did not reach {count} subscriber(s) within {seconds}s")
        time.sleep(0.02)


def answered_clients(redis: RedisServer) -> int:
    """Redis's clients that have sent it a command, the CLIENT LIST asking excluded."""
    lines = redis.command("CLIENT", "LIST").split(b"\n")
    return sum(
        1 for line in lines
        if line.startswith(b"id=") and b" cmd=NULL " not in line and b" cmd=client|list " not in line
    )


def wait_for_clients(redis: RedisServer, count: int, seconds: float = 30.0) -> None:
    """Until Redis has ``count`` clients besides the one asking that have sent it a command.

    A broker's link PINGs first and is used once the answer is back, and Redis answered that
    PING before this CLIENT LIST: a link connected but not yet answered would drop a publish
    (delivered locally only, as while Redis is away) and fail the test by a race.
    """
    deadline = time.monotonic() + seconds
    while answered_clients(redis) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"Redis did not reach {count} clients within {seconds}s")
        time.sleep(0.02)


# The relay's bookkeeping with plain calls: a stand-in for the connection that publishes.


class FakePublisher:
    """Takes PUBLISHes and lets the test answer each one."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes, Any]] = []
        self.connected = True
        self.transport = None

    def publish(self, channel: bytes, data: bytes) -> Any:
        from twisted.internet.defer import Deferred

        answer: Any = Deferred()
        self.sent.append((channel, data, answer))
        return answer


def relay_with_fakes() -> tuple[Any, FakePublisher, list[tuple[str, bytes]]]:
    import txredisapi

    delivered: list[tuple[str, bytes]] = []
    broker = _broker.RedisBroker("redis://127.0.0.1:1/0", lambda c, d: delivered.append((c, d)), lambda: [])
    publisher = FakePublisher()
    broker._publisher, broker._subscriber, broker._subscribing = publisher, object(), object()
    broker._response_error = txredisapi.ResponseError
    broker._running = True
    return broker, publisher, delivered


def test_refused_publishes_and_those_sent_behind_them_are_delivered_here_in_order(logs: Any) -> None:
    """Refusals coming back for a burst: each refused message, then those published meanwhile, here, in order."""
    import txredisapi

    broker, publisher, delivered = relay_with_fakes()
    assert broker.publish("room:a", b"\x011") and broker.publish("room:a", b"\x012")
    publisher.sent[0][2].callback(txredisapi.ResponseError("NOPERM no permission for publish"))
    assert delivered == [("room:a", b"\x011")]
    assert broker.publish("room:a", b"\x013") is True  # (held: #2's answer is still to come)
    assert delivered == [("room:a", b"\x011")]
    publisher.sent[1][2].callback(txredisapi.ResponseError("NOPERM no permission for publish"))
    assert delivered == [("room:a", b"\x011"), ("room:a", b"\x012"), ("room:a", b"\x013")]
    assert broker.publish("room:a", b"\x014") is False  # refused lately, nothing in flight: the hub delivers it
    assert len(publisher.sent) == 2 and broker.up
    broker._refused_until = 0.0  # (as after _REFUSED_RETRY)
    assert broker.publish("room:a", b"\x015")
    publisher.sent[2][2].callback(1)  # accepted this time (the ACL was fixed)
    assert len([e for e in logs.at(LogLevel.error) if "refused PUBLISH" in formatEvent(e)]) == 1


def test_what_waits_behind_refusals_is_delivered_here_when_the_connection_goes() -> None:
    """Messages held behind unanswered refused PUBLISHes are delivered here if Redis goes away meanwhile."""
    import txredisapi

    broker, publisher, delivered = relay_with_fakes()
    broker.publish("room:a", b"\x011")
    broker.publish("room:a", b"\x012")
    publisher.sent[0][2].callback(txredisapi.ResponseError("NOPERM"))
    broker.publish("room:a", b"\x013")
    broker.lost(publisher)
    assert delivered == [("room:a", b"\x011"), ("room:a", b"\x013")]
    assert not broker.up
    publisher.sent[1][2].errback(Exception("connection lost"))  # (its answer, from a connection now gone)
    assert broker.unconfirmed == 1


def test_messages_on_channels_of_another_prefix_are_ignored() -> None:
    """What Redis brings on a channel outside this app's prefix (another db's) is not delivered."""
    broker, _, delivered = relay_with_fakes()
    broker._received(b"crowtwist:1:room:a", b"\x01x")
    broker._received(b"crowtwist:0:room:a", b"\x01y")
    assert delivered == [("room:a", b"\x01y")] and broker.received == 1
