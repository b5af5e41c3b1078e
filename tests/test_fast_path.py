"""The receive and send fast paths: the same messages and the same failures as autobahn's
general path, whatever the read boundaries."""

from __future__ import annotations

from typing import Any

import pytest

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from crowtwist import Crow
from crowtwist.websocket import _frames as frames_module
from crowtwist.websocket import _masking

from . import frames as F
from .memory import MemoryClient


def echo_app(**kwargs: Any) -> tuple[Crow, list[tuple[str | bytes, bool]]]:
    app = Crow(**kwargs)
    seen: list[tuple[str | bytes, bool]] = []

    def on_message(conn: Any, data: str | bytes, is_binary: bool) -> None:
        seen.append((data, is_binary))
        if isinstance(data, bytes):
            conn.send_binary(data)
        else:
            conn.send_text(data)

    app.route("/ws").websocket().onmessage(on_message)
    return app, seen


@pytest.fixture(params=["C", "python"])
def unmasking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the C helper and again with the pure-Python fallback."""
    if request.param == "python":
        monkeypatch.setattr(frames_module, "unmask", _masking._unmask_python)
    return str(request.param)


STREAM = [
    (F.encode(F.TEXT, "héllo".encode()), ("héllo", False)),
    (F.encode(F.BINARY, b"\x00\x01\x02"), (b"\x00\x01\x02", True)),
    (F.encode(F.TEXT, b"x" * 300), ("x" * 300, False)),  # 16-bit length
    (F.encode(F.PING, b"p"), None),  # control frame: the general path, then back
    (F.encode(F.TEXT, b"frag", fin=False) + F.encode(F.CONT, b"ment"), ("fragment", False)),
    (F.encode(F.BINARY, b"y" * 70000), (b"y" * 70000, True)),  # 64-bit length
    (F.encode(F.TEXT, "ü€".encode() * 40000), ("ü€" * 40000, False)),  # 200 KB, spans reads
    (F.encode(F.TEXT, b""), ("", False)),
    (F.encode(F.TEXT, "€".encode()), ("€", False)),
]


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, 64, 1000, 1 << 20])
def test_any_read_boundaries(step: int, unmasking: str) -> None:
    """A stream of mixed frames split at any boundary yields the same messages and echoes."""
    app, seen = echo_app()
    client = MemoryClient(app, "/ws")
    data = b"".join(frame for frame, _ in STREAM)
    for i in range(0, len(data), step):
        client.protocol.dataReceived(data[i : i + step])
    expected = [message for _, message in STREAM if message is not None]
    assert seen == expected
    assert client.messages() == [m for m, _ in expected]
    assert [f.opcode for f in client.received() if f.opcode == F.PONG] == [F.PONG]


def test_every_split_point_of_one_frame(unmasking: str) -> None:
    """One masked frame split at every byte position arrives once, intact."""
    frame = F.encode(F.TEXT, "split ✓".encode() * 10)
    for cut in range(1, len(frame)):
        app, seen = echo_app()
        client = MemoryClient(app, "/ws")
        client.protocol.dataReceived(frame[:cut])
        client.protocol.dataReceived(frame[cut:])
        assert seen == [("split ✓" * 10, False)], cut


def test_failures_on_the_fast_path_are_autobahns() -> None:
    """Bad UTF-8, oversized and (under enforcement) unmasked frames fail as the general path fails them."""
    app, seen = echo_app()
    app.websocket_max_payload(10)
    client = MemoryClient(app, "/ws")
    client.protocol.dataReceived(F.encode(F.TEXT, b"ok") + F.encode(F.TEXT, b"\xc3\x28"))
    assert seen == [("ok", False)] and client.close_frame().close_code == 1007  # type: ignore[union-attr]
    client = MemoryClient(app, "/ws")
    client.protocol.dataReceived(F.encode(F.BINARY, b"z" * 11))
    assert client.close_frame().close_code == 1009  # type: ignore[union-attr]
    strict, seen = echo_app(enforce_ws_spec=True)
    client = MemoryClient(strict, "/ws")
    client.protocol.dataReceived(F.encode(F.TEXT, b"bare", mask=False))
    assert seen == [] and client.close_frame().close_code == 1002  # type: ignore[union-attr]


@pytest.mark.fast_paths("fast path")
def test_compressed_connections_take_crowtwists_parser() -> None:
    """With permessage-deflate negotiated, crowtwist's parser and its deflate codec serve the connection
    (tests/test_deflate.py has the rest, autobahn's path when the deflate guard fails included)."""
    app, _ = echo_app()
    client = MemoryClient(app, "/ws", {"Sec-WebSocket-Extensions": "permessage-deflate"})
    assert client.protocol.plain is False
    assert client.protocol._parser is not None and client.protocol._deflate is not None
    plain = MemoryClient(app, "/ws")
    assert plain.protocol.plain is True and plain.protocol._parser is not None


def test_data_frame_inside_a_fragmented_message_is_still_a_violation() -> None:
    """A whole text frame arriving, in its own read, while a fragmented message is open fails with 1002."""
    app, seen = echo_app()
    client = MemoryClient(app, "/ws")
    client.protocol.dataReceived(F.encode(F.TEXT, b"frag", fin=False))
    client.protocol.dataReceived(F.encode(F.TEXT, b"intruder"))
    assert seen == []
    assert client.close_frame().close_code == 1002  # type: ignore[union-attr]


@pytest.mark.fast_paths("fast path")
def test_large_frames_stay_on_the_fast_path(unmasking: str) -> None:
    """A 1 MB text frame arriving in 64 KiB reads is delivered whole without autobahn's frame parser."""
    app, seen = echo_app()
    client = MemoryClient(app, "/ws")
    text = "fast ✓ " * 125_000
    frame = F.encode(F.TEXT, text.encode())
    for i in range(0, len(frame), 65536):
        client.protocol.dataReceived(frame[i : i + 65536])
    assert seen == [(text, False)] and client.messages() == [text]
    # autobahn's validator is created on first use: the general path never ran.
    assert "utf8validator" not in vars(client.protocol)
    assert client.protocol.trafficStats.incomingOctetsWireLevel == len(frame)


@pytest.mark.parametrize(
    "header",
    [
        bytes([0x81, 0x80 | 126, 0, 5]),  # a 16-bit length that fits in 7 bits
        bytes([0x82, 0x80 | 127]) + (300).to_bytes(8, "big"),  # a 64-bit length that fits in 16 bits
        bytes([0x82, 0x80 | 127]) + (1 << 63).to_bytes(8, "big"),  # the most significant bit set
    ],
)
def test_invalid_lengths_are_failed_by_autobahn(header: bytes) -> None:
    """Non-minimal and over-2^63 length encodings reach autobahn, which fails them with 1002."""
    app, seen = echo_app()
    client = MemoryClient(app, "/ws")
    client.protocol.dataReceived(header + b"\0\0\0\0" + b"hello")
    assert seen == []
    assert client.close_frame().close_code == 1002  # type: ignore[union-attr]


def test_frame_completed_after_the_app_closed_is_delivered() -> None:
    """A message still arriving when the app closes the connection is delivered, as autobahn delivers it."""
    app, seen = echo_app()
    client = MemoryClient(app, "/ws")
    frame = F.encode(F.TEXT, b"z" * 100_000)
    client.protocol.dataReceived(frame[:1000])
    client.protocol.conn.close("bye")
    client.protocol.dataReceived(frame[1000:])
    # autobahn delivers data that arrives before the peer's close frame.
    assert seen == [("z" * 100_000, False)]
    client.finish_close()
    assert client.close_frame().close_code == 1000  # type: ignore[union-attr]


@pytest.mark.fast_paths("fast path")
def test_connections_start_with_autobahns_state() -> None:
    """A new connection has every attribute autobahn's own set-up gives it, with the same values.

    crowtwist's protocol keeps autobahn's options and initial flags on the class
    instead of copying them onto each connection; this catches an autobahn release
    that starts a connection with something new.
    """
    app, _ = echo_app()
    factory = app.websocket_rules[0].factory
    ours = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    theirs = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2))
    for protocol in (ours, theirs):
        protocol.transport = StringTransport()
    before = set(vars(theirs))
    ours._connectionMade()
    WebSocketServerProtocol._connectionMade(theirs)
    if theirs.openHandshakeTimeoutCall is not None:
        theirs.openHandshakeTimeoutCall.cancel()
    factory.countConnections -= 2
    per_connection = {"trafficStats", "send_queue", "utf8validator", "openHandshakeTimeoutCall"}
    added = {name: value for name, value in vars(theirs).items() if name not in before}
    assert len(added) > 25
    for name, value in added.items():
        assert hasattr(ours, name), name
        if name not in per_connection:
            assert getattr(ours, name) == value, name
    for name in WebSocketServerProtocol.CONFIG_ATTRS:
        assert getattr(ours, name) == getattr(factory, name), name
    assert not set(vars(ours)) & set(WebSocketServerProtocol.CONFIG_ATTRS)


def test_frames_in_the_same_read_as_the_handshake() -> None:
    """A client that sends frames right behind its handshake, without waiting for the 101, loses none."""
    app, seen = echo_app()
    client = MemoryClient(app, "/ws", raw=F.handshake("/ws") + F.encode(F.TEXT, b"early") + F.encode(F.BINARY, b"\x01"))
    assert client.status == 101
    assert seen == [("early", False), (b"\x01", True)]
    assert client.messages() == ["early", b"\x01"]


CLOSES = [
    b"",
    F.close_payload(1000, ""),
    F.close_payload(1000, "bye"),
    F.close_payload(1001, "é" * 40),
    F.close_payload(3000, "app"),
    (999).to_bytes(2, "big"),
    (1004).to_bytes(2, "big"),
    (5000).to_bytes(2, "big"),
    (1000).to_bytes(2, "big") + b"\xc3\x28",
    b"\x03",
    (1000).to_bytes(2, "big") + b"r" * 124,
]


def close_outcome(payload: bytes, general: bool, step: int = 0, **app_kwargs: Any) -> tuple[Any, ...]:
    app = Crow(**app_kwargs)
    closes: list[tuple[str, int]] = []
    app.route("/ws").websocket().onmessage(lambda c, d, b: None).onclose(lambda c, r, code: closes.append((r, code)))
    client = MemoryClient(app, "/ws")
    if general:
        client.protocol._plain = False  # autobahn's frame machinery for every frame
    data = F.encode(F.TEXT, b"before") + F.encode(F.CLOSE, payload, mask=not app_kwargs)
    for i in range(0, len(data), step or len(data)):
        client.protocol.dataReceived(data[i : i + (step or len(data))])
    frame = client.close_frame()
    disconnecting = client.transport.disconnecting
    client.drop(clean=True)
    return (None if frame is None else frame.payload), disconnecting, closes


@pytest.mark.parametrize("payload", CLOSES, ids=lambda p: p[:4].hex() or "empty")
def test_close_frames_on_the_fast_path_are_autobahns(payload: bytes) -> None:
    """A client's close frame, valid or not, gets the same reply and onclose on the fast path as on autobahn's."""
    assert close_outcome(payload, general=False) == close_outcome(payload, general=True)


def test_close_frame_split_anywhere() -> None:
    """A close frame arriving a byte at a time is answered once, like one arriving whole."""
    payload = F.close_payload(1000, "bye")
    assert close_outcome(payload, general=False, step=1) == close_outcome(payload, general=True)


def test_oversized_and_unmasked_closes_are_autobahns() -> None:
    """A close frame over 125 bytes, or unmasked under enforcement, is failed by autobahn's checks."""
    long_close = F.close_payload(1000, "r" * 130)
    assert close_outcome(long_close, general=False) == close_outcome(long_close, general=True)
    payload = F.close_payload(1000, "")
    strict = close_outcome(payload, general=False, enforce_ws_spec=True)
    assert strict == close_outcome(payload, general=True, enforce_ws_spec=True)
    assert strict[0] is not None and strict[0][:2] == (1002).to_bytes(2, "big")


def opened(app: Crow, autobahns: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, dict[str, Any]]:
    from crowtwist.websocket._protocol import CrowServerProtocol

    with monkeypatch.context() as patch:
        if autobahns:
            patch.setattr(CrowServerProtocol, "_succeed_plain", WebSocketServerProtocol.succeedHandshake)
        client = MemoryClient(app, "/ws", {"Sec-WebSocket-Protocol": "b, a"})
    state = {
        name: value if isinstance(value, (bool, int, float, str, bytes, list, type(None))) else type(value)
        for name, value in vars(client.protocol).items()
    }
    return f"{client.status_line}\r\n{sorted(client.headers.items())}".encode(), state


@pytest.mark.fast_paths("fast path")
@pytest.mark.parametrize("keepalive", [20.0, None])
def test_plain_101_is_autobahns(keepalive: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 101 for an upgrade without extensions, and the state it leaves, are what autobahn's succeedHandshake gives."""
    app = Crow()
    app.websocket_limits(keepalive_interval=keepalive)
    app.route("/ws").websocket().subprotocols(["a", "b"])
    ours, autobahns = opened(app, False, monkeypatch), opened(app, True, monkeypatch)
    assert ours == autobahns
    assert b"'sec-websocket-protocol', 'a'" in ours[0]
    assert ("autoPingPendingCall" in ours[1]) is (keepalive is not None)


CLOSE_SENDS = [(1000, b"bye", True), (None, None, True), (1001, b"", False), (4000, "é".encode() * 61, False), (None, b"x", True)]


def sent_close(args: tuple[int | None, bytes | None, bool], autobahns: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    from crowtwist.websocket._autobahn._closing import ClosingProtocol

    app, _ = echo_app()
    app.websocket_limits(close_timeout=2.0)
    with monkeypatch.context() as patch:
        if autobahns:
            patch.setattr(ClosingProtocol, "sendCloseFrame", WebSocketServerProtocol.sendCloseFrame)
        client = MemoryClient(app, "/ws")
        before = len(client.transport.value())
        protocol: Any = client.protocol
        code, reason, is_reply = args
        protocol.sendCloseFrame(code=code, reasonUtf8=reason, isReply=is_reply)
        timer = protocol.closeHandshakeTimeoutCall
        state = (
            client.transport.value()[before:], protocol.state, protocol.closedByMe,
            protocol.localCloseCode, protocol.localCloseReason, timer is not None,
        )
        protocol.sendCloseFrame(code=1000, reasonUtf8=b"again", isReply=False)  # closing: ignored
        state += (client.transport.value()[before:],)
        if timer is not None:
            timer.cancel()
    client.drop(clean=True)
    return state


@pytest.mark.fast_paths("fast path")
@pytest.mark.parametrize("args", CLOSE_SENDS, ids=lambda a: f"{a[0]}-{len(a[1] or b'')}-{'reply' if a[2] else 'ours'}")
def test_close_frame_sent_is_autobahns(args: tuple[int | None, bytes | None, bool], monkeypatch: pytest.MonkeyPatch) -> None:
    """The close frame built directly is byte for byte autobahn's, with the same state and timer after it."""
    ours = sent_close(args, False, monkeypatch)
    assert ours == sent_close(args, True, monkeypatch)
    assert ours[0][:1] == b"\x88" and ours[6] == ours[0]


@pytest.mark.fast_paths("fast path")
@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
def test_peer_is_named_as_autobahns_peer2str_names_it(family: str) -> None:
    from autobahn.twisted.util import peer2str
    from twisted.internet.address import IPv6Address

    app, _ = echo_app()
    factory = app.websocket_rules[0].factory
    address = IPv4Address("TCP", "10.1.2.3", 4000) if family == "IPv4" else IPv6Address("TCP", "::1", 4000)
    protocol: Any = factory.buildProtocol(address)
    protocol.makeConnection(StringTransport(peerAddress=address))
    factory.countConnections -= 1
    assert protocol.peer == peer2str(protocol.transport) == f"tcp{family[-1]}:{address.host}:4000"
