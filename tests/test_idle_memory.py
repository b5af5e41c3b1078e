"""What an idle connection keeps: its protocol's dict stays small, and what left it still reads right.

100,000 idle connections each hold one protocol dict: up to 21 entries it is
a dict of 32 slots, from 22 on one of 64, about 380 bytes more each
(benchmarks/idle100k.py; docs/reliability.md).
"""

from __future__ import annotations

from typing import Any

from crowtwist import Connection, Crow

from . import frames as F
from .memory import MemoryClient

_SMALL_DICT = 21
"""The most entries a dict of 32 slots holds (CPython's usable two thirds)."""


def _app(subprotocols: list[str] | None = None) -> tuple[Crow, list[Connection]]:
    app = Crow()
    opened: list[Connection] = []
    rule = (app.route("/ws").websocket().onopen(opened.append)
            .onmessage(lambda conn, data, is_binary: conn.send_text(str(data))))
    if subprotocols:
        rule.subprotocols(subprotocols)
    return app, opened


def _keepalive_round(client: MemoryClient) -> None:
    """The server's keepalive ping, answered with its pong."""
    proto = client.protocol
    proto._sendAutoPing()
    pings = [f for f in client.received() if f.opcode == F.PING]
    assert pings, "the server sent no ping"
    assert proto.autoPingPending == pings[-1].payload
    client.send(F.PONG, pings[-1].payload)
    assert proto.autoPingPending is None  # the pong was the awaited one


def test_idle_connection_dict_stays_small_through_keepalive() -> None:
    """After the handshake, a message and a keepalive round, the dict has no handshake leftovers and <= 21 entries."""
    for crow_site in (False, True):
        app, opened = _app()
        client = MemoryClient(app, "/ws", crow_site=crow_site)
        assert client.status == 101 and len(opened) == 1
        client.send_text("hi")
        assert client.messages() == ["hi"]
        _keepalive_round(client)
        state = client.protocol.__dict__
        for name in ("http_request_path", "http_request_uri", "_wskey", "websocket_version", "inside_message",
                     "current_frame", "websocket_protocol_in_use", "websocket_extensions_in_use", "_valid_events",
                     "_results", "_upgrade", "peer"):
            assert name not in state, name
        assert len(state) <= _SMALL_DICT, sorted(state)


def test_what_left_the_dict_still_reads_right() -> None:
    """The class holds the plain handshake's values; peer and autobahn's observers are made on first use."""
    app, opened = _app()
    client = MemoryClient(app, "/ws")
    proto = client.protocol
    assert proto.websocket_version == 13
    assert proto.websocket_protocol_in_use is None and opened[0].get_subprotocol() == ""
    assert list(proto.websocket_extensions_in_use) == []
    assert proto.inside_message is False and proto.current_frame is None
    assert proto.peer == "tcp4:10.1.2.3:40000"
    seen: list[Any] = []
    proto.on("message", lambda *args, **kwargs: seen.append(args))  # autobahn's observer API
    proto.fire("message", b"x")
    assert seen == [(b"x",)] and proto._results["message"] is not None
    assert proto._valid_events == ["message"]
    # The values the class holds are shared: a connection that sets one has its own.
    proto.inside_message = True
    assert type(proto).inside_message is False


def test_chosen_subprotocol_stays_on_the_connection() -> None:
    """A value that differs from the class's (a chosen subprotocol) is kept per connection."""
    app, opened = _app(["chat.v1"])
    client = MemoryClient(app, "/ws", {"Sec-WebSocket-Protocol": "chat.v1"})
    assert client.headers["sec-websocket-protocol"] == "chat.v1"
    assert client.protocol.__dict__["websocket_protocol_in_use"] == "chat.v1"
    assert opened[0].get_subprotocol() == "chat.v1"
    other = MemoryClient(app, "/ws")
    assert other.protocol.websocket_protocol_in_use is None


def test_params_and_userdata_reach_onopen_and_leave() -> None:
    """The upgrade's parameters reach onopen, and the connection keeps no reference to them after."""
    app = Crow()
    seen: list[Any] = []
    userdata = {"user": "ann"}

    def accept(request: Any) -> bool:
        request.userdata = userdata
        return True

    (app.route("/ws/<int>").websocket().onaccept(accept)
        .onopen(lambda conn: seen.append((conn.params, conn.userdata))))
    client = MemoryClient(app, "/ws/7")
    assert client.status == 101 and seen == [((7,), userdata)]
    assert "_upgrade" not in client.protocol.__dict__ and client.protocol._upgrade is None


def test_is_closed_is_made_on_first_use_and_fires_as_autobahns() -> None:
    """autobahn's ``is_closed``: asked before the close it fires then; asked after, it has fired."""
    app, _ = _app()
    early = MemoryClient(app, "/ws")
    assert "is_closed" not in early.protocol.__dict__
    waiting = early.protocol.is_closed
    assert not waiting.called
    early.send_close(1000)
    early.drop(clean=True)
    assert waiting.called and waiting.result is early.protocol
    late = MemoryClient(app, "/ws")
    late.send_close(1000)
    late.drop(clean=True)
    # (after onclose the protocol keeps a fired stand-in, not the Deferred holding itself: no cycle)
    assert late.protocol.is_closed.called
