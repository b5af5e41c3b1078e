"""Smaller promises at the edges: argument checks, representations, thread hops, odd paths."""

from __future__ import annotations

import threading
from typing import Any
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from crowtwist import Connection, Crow, Response
from crowtwist._handlers import Handler, as_deferred, positional_arity
from crowtwist._routing import PARAM_TYPES, parse_pattern
from crowtwist._site import CrowSite

from .clients import connect_autobahn, within
from .memory import MemoryClient
from .test_end_to_end import serve  # noqa: F401  (fixture)


def test_arity_of_builtins_is_unknown() -> None:
    """Callables without a signature are called with every argument the event offers."""
    assert positional_arity(print) is None or positional_arity(print) >= 0
    handler = Handler(dict.fromkeys, "onclose", 2, 3)
    assert handler.takes in (2, 3)


@pytest_twisted.ensureDeferred
async def test_other_awaitables_are_awaited() -> None:
    """An awaitable that is neither a coroutine nor a Deferred is awaited too."""

    class Ready:
        def __await__(self) -> Iterator[Any]:
            return iter(())

    d = as_deferred(Ready())
    assert d is not None
    await d


def test_bad_arguments_are_refused() -> None:
    """Patterns, subprotocols, payload bounds and methods are checked when declared."""
    with pytest.raises(TypeError):
        parse_pattern(b"/x")  # type: ignore[arg-type]
    app = Crow()
    rule = app.route("/ws").websocket()
    with pytest.raises(ValueError, match="invalid subprotocol"):
        rule.subprotocols(["a b"])
    with pytest.raises(ValueError, match="max_payload"):
        rule.max_payload(0)
    with pytest.raises(ValueError, match="at least one method"):
        app.route("/x").methods()


def test_representations() -> None:
    """Rules, views, connections and types print usefully."""
    app = Crow()
    kept: list[Connection] = []
    rule = app.route("/ws").websocket().onopen(kept.append)
    app.route("/h")(lambda req: "h")
    MemoryClient(app, "/ws")
    assert repr(rule) == "<WebSocketRule '/ws'>"
    assert repr(rule.connections) == "<ConnectionsView of 1 connection(s)>"
    assert kept[0] in rule.connections
    assert "open" in repr(kept[0]) and "10.1.2.3" in repr(kept[0])
    assert repr(PARAM_TYPES["int"]) == "<int>"
    assert "HttpRule" in repr(app._root.static["h"].endpoint.http["GET"])  # type: ignore[union-attr]
    with pytest.raises(TypeError):
        kept[0].send_binary("text")  # type: ignore[arg-type]


def test_response_helpers() -> None:
    """Response.set_header replaces a header; a None body is empty."""
    response = Response(204, None)
    response.set_header("X-A", "1")
    response.set_header("X-A", "2")
    assert response.headers == {"X-A": "2"}
    assert response.encoded() == (b"", None)


def test_undecodable_path_is_404() -> None:
    """A path that is not UTF-8 matches no route."""
    app = Crow()
    app.route("/<string>")(lambda req, s: s)
    app.route("/a/<string>")(lambda req, s: s)
    raw = b"GET /%ff HTTP/1.1\r\nHost: x\r\n\r\n"
    assert MemoryClient(app, raw=raw).status == 404
    raw = b"GET /a/%ff HTTP/1.1\r\nHost: x\r\n\r\n"
    assert MemoryClient(app, raw=raw).status == 404


def test_empty_app_root_is_404() -> None:
    """An app with no '/' route answers 404 at its root."""
    app = Crow()
    app.route("/a")(lambda req: "a")

    class Mounted:
        def resource(self) -> Any:
            from twisted.web.resource import Resource

            root = Resource()
            root.putChild(b"m", app.resource())
            return root

    assert MemoryClient(Mounted(), raw=b"GET /m HTTP/1.1\r\nHost: x\r\n\r\n").status == 404


def test_deadline_rearms_on_kept_alive_connections() -> None:
    """Each request on a kept-alive connection gets its own head deadline."""
    app = Crow()
    app.route("/")(lambda req: "ok")
    clock = Clock()
    site = CrowSite(app.resource(), handshake_timeout=5, reactor=clock)
    transport = StringTransport()
    channel = site.buildProtocol(None)
    channel.makeConnection(transport)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" in transport.value()

    def deadlines() -> int:
        return sum(1 for call in clock.getDelayedCalls() if getattr(call.func, "__name__", "") == "_expired")

    assert deadlines() == 0
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    assert deadlines() == 1
    clock.advance(6)
    assert transport.disconnecting


@pytest_twisted.inlineCallbacks
def test_close_and_control_frames_from_threads(serve: Any) -> Iterator[Any]:  # noqa: F811
    """send_ping and close hop to the reactor thread like the sends do."""
    app = Crow()
    app.route("/ws").websocket().onmessage(
        lambda conn, data, is_binary: threading.Thread(
            target=lambda: (conn.send_ping(b"p"), conn.close("threaded", 4000))
        ).start()
    )
    port = serve(app)
    client = yield connect_autobahn(port, "/ws")
    client.sendMessage(b"go", False)
    _, code, reason = yield within(client.closed_with)
    assert code == 4000


def test_drained_after_close_is_immediate() -> None:
    """drained() on a closed connection fires at once."""
    app = Crow()
    kept: list[Connection] = []
    app.route("/ws").websocket().onopen(kept.append)
    MemoryClient(app, "/ws").drop()
    assert kept[0].drained().called


def test_plain_values_stay_plain() -> None:
    """as_deferred leaves plain values alone."""
    assert as_deferred(42) is None
    assert as_deferred("x") is None
