"""permessage-deflate on crowtwist's own parser and sender (``websocket/_deflate.py``).

The codec by plain calls, against the standard library's ``zlib`` as the
peer; then a whole connection in memory (compressed frames built here, the
server's frames decoded here); then real sockets with clients we did not
write (websockets', autobahn's).
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any
from collections.abc import Iterator

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings, strategies as st
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.threads import deferToThread
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect

from crowtwist import Crow
from crowtwist.websocket._autobahn import _guard
from crowtwist.websocket._deflate import TAIL, DeflateCodec, DeflateParams, frame_bound
from crowtwist.websocket._extensions import offered_acceptor
from crowtwist.websocket._frames import ProtocolError

from . import frames as F
from .clients import AutobahnClient, within
from .memory import MemoryClient
from .test_end_to_end import serve  # noqa: F401  (fixture)

DEFLATE = {"Sec-WebSocket-Extensions": "permessage-deflate"}


def client_deflate(message: bytes, bits: int = 15, deflater: Any = None) -> bytes:
    """A message as a client compresses it (RFC 7692 7.2.1): sync flush, tail stripped."""
    deflater = deflater or zlib.compressobj(6, zlib.DEFLATED, -bits)
    data = deflater.compress(message) + deflater.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(TAIL)
    return data[:-4]


def client_inflate(data: bytes, bits: int = 15, inflater: Any = None) -> bytes:
    inflater = inflater or zlib.decompressobj(-bits)
    return bytes(inflater.decompress(data + TAIL))


# The codec.


@pytest.mark.parametrize("bits", range(8, 16))
def test_round_trip_with_every_window(bits: int) -> None:
    """Window bits 8..15 both ways (8 is deflated and inflated as 9, as zlib requires for raw deflate)."""
    params = DeflateParams(False, False, bits, bits)
    server = DeflateCodec(params)
    client = DeflateCodec(params, is_server=False)
    for message in (b"", b"x", os.urandom(3000), b'{"id": 1, "text": "the quick brown fox"}' * 500):
        assert client.inflate_message(server.compress(message)) == message
        assert server.inflate_message(client.compress(message)) == message


def test_zlib_peer_with_small_windows() -> None:
    """What a peer deflates with a 9-bit window, the server inflates when 9 was agreed; and back."""
    server = DeflateCodec(DeflateParams(False, False, 9, 9))
    message = b"abcdefgh" * 2000
    assert server.inflate_message(client_deflate(message, 9)) == message
    assert client_inflate(server.compress(message), 9) == message


@pytest.mark.parametrize("server_keeps", [True, False])
@pytest.mark.parametrize("client_keeps", [True, False])
def test_context_takeover_each_way(server_keeps: bool, client_keeps: bool) -> None:
    """With takeover a repeated message refers to the last one (and shrinks); without, each stands alone."""
    params = DeflateParams(not server_keeps, not client_keeps)
    server = DeflateCodec(params)
    message = os.urandom(2000)
    first, second = server.compress(message), server.compress(message)
    # The client's inflater: one for the connection when the server keeps its context.
    if server_keeps:
        inflater = zlib.decompressobj(-15)
        assert [client_inflate(first, inflater=inflater), client_inflate(second, inflater=inflater)] == [message] * 2
        assert len(second) < 100 < len(first)
    else:
        assert client_inflate(first) == client_inflate(second) == message
        assert first == second
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15) if client_keeps else None
    sent = [client_deflate(message, deflater=deflater) for _ in range(2)]
    assert [server.inflate_message(data) for data in sent] == [message] * 2
    # The inflater is kept between messages exactly when the client keeps its context.
    assert (server._inflater is not None) is client_keeps


def test_no_context_takeover_refuses_a_back_reference() -> None:
    """With client_no_context_takeover agreed, a message referring to the one before it is not deflate data."""
    server = DeflateCodec(DeflateParams(client_no_context_takeover=True))
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
    message = os.urandom(500)
    assert server.inflate_message(client_deflate(message, deflater=deflater)) == message
    with pytest.raises(ProtocolError) as raised:
        server.inflate_message(client_deflate(message, deflater=deflater))
    assert raised.value.code == 1007


@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=5))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_message_over_any_fragments(message: bytes, cuts: list[int]) -> None:
    """A compressed message split into frames anywhere inflates to the message."""
    data = client_deflate(message)
    points = sorted({min(cut, len(data)) for cut in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    server = DeflateCodec()
    server.start()
    out = b"".join(server.inflate(piece, index == len(pieces) - 1) for index, piece in enumerate(pieces))
    assert out == message


def test_a_bomb_stops_at_the_bound() -> None:
    """64 MiB of zeros in 64 KiB of deflate: 1009 once past the bound, with no more than bound + 1 inflated."""
    bomb = client_deflate(bytes(64 * 1024 * 1024))
    assert len(bomb) < 100_000
    server = DeflateCodec(max_size=1_000_000)
    server.start()
    with pytest.raises(ProtocolError) as raised:
        server.inflate(bomb, True)
    assert raised.value.code == 1009
    assert server._size == 1_000_001


def test_the_bound_spans_fragments() -> None:
    data = client_deflate(b"a" * 3000)
    server = DeflateCodec(max_size=2999)
    server.start()
    with pytest.raises(ProtocolError) as raised:
        server.inflate(data[:5], False)
        server.inflate(data[5:], True)
    assert raised.value.code == 1009
    exact = DeflateCodec(max_size=3000)
    assert exact.inflate_message(data) == b"a" * 3000


@pytest.mark.parametrize("data", [b"\xff\xff\xff\xff", b"\x07garbage", b"\x03\x00\x01"])
def test_invalid_data_is_1007(data: bytes) -> None:
    """Bytes that are not deflate (an invalid block type, a bad stored length, a BFINAL block and more) fail with 1007."""
    with pytest.raises(ProtocolError) as raised:
        DeflateCodec().inflate_message(data)
    assert raised.value.code == 1007


def test_a_final_block_then_a_fresh_context() -> None:
    """A message ended with BFINAL set (7.2.3.4) inflates; the next one starts a new stream."""
    whole = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = whole.compress(b"hello") + whole.flush()
    server = DeflateCodec()
    assert server.inflate_message(first) == b"hello"
    assert server.inflate_message(client_deflate(b"again")) == b"again"


def test_frame_bound_leaves_room_for_stored_blocks() -> None:
    assert frame_bound(None) is None
    data = client_deflate(os.urandom(100_000))
    bound = frame_bound(100_000)
    assert bound is not None and len(data) <= bound


def test_window_bits_out_of_range() -> None:
    with pytest.raises(ValueError):
        DeflateCodec(DeflateParams(server_max_window_bits=16))


def test_acceptor_keeps_or_asks_context_takeover() -> None:
    """By default the client keeps its context; the setting (or the client's own hint) asks it not to."""
    from autobahn.websocket.compress import PerMessageDeflateOffer

    def answer(params: dict[str, list[object]], takeover: bool) -> str:
        offers = [("permessage-deflate", params)]
        accept = offered_acceptor(offers, None, takeover)([PerMessageDeflateOffer.parse(params)])
        return str(accept.get_extension_string())  # type: ignore[attr-defined]

    assert answer({"client_max_window_bits": [True]}, True) == "permessage-deflate"
    assert "client_no_context_takeover" in answer({"client_max_window_bits": [True]}, False)
    assert "client_no_context_takeover" in answer({"client_no_context_takeover": [True]}, True)
    assert "client_max_window_bits=10" in answer({"client_max_window_bits": ["10"]}, True)


# A connection in memory.


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(first byte, payload) of each whole unmasked frame in ``data``."""
    frames = []
    pos = 0
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        length = second & 0x7F
        start = pos + 2
        if length == 126:
            (length,), start = struct.unpack_from("!H", data, start), start + 2
        elif length == 127:
            (length,), start = struct.unpack_from("!Q", data, start), start + 8
        frames.append((first, data[start : start + length]))
        pos = start + length
    return frames


def echo_app(**limits: Any) -> Crow:
    app = Crow()
    rule = app.route("/").websocket().onmessage(
        lambda conn, data, is_binary: conn.send_binary(data) if is_binary else conn.send_text(data)
    )
    if limits:
        rule.max_payload(limits["max_payload"])
    return app


class DeflateClient(MemoryClient):
    """A memory client that agreed permessage-deflate, and reads the server's frames with their RSV bits."""

    def __init__(self, app: Crow, extensions: str = "permessage-deflate", crow_site: bool | None = None) -> None:
        super().__init__(app, headers={"Sec-WebSocket-Extensions": extensions}, crow_site=crow_site)
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflater = zlib.decompressobj(-15)
        self.raw = b""

    def send_compressed(self, message: bytes, opcode: int = F.TEXT, pieces: int = 1) -> None:
        data = client_deflate(message, deflater=self.deflater)
        size = -(-len(data) // pieces) or 1
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        for index, chunk in enumerate(chunks):
            self.send(opcode if index == 0 else F.CONT, chunk, fin=index == len(chunks) - 1, rsv=4 if index == 0 else 0)

    def replies(self) -> list[tuple[int, bytes]]:
        """(first byte, message) of each frame since the last call, inflated where RSV1 is set."""
        self.raw += self.transport.value()
        self.transport.clear()
        out = []
        for first, payload in server_frames(self.raw):
            out.append((first, client_inflate(payload, inflater=self.inflater) if first & 0x40 else payload))
        self.raw = b""
        return out


@pytest.mark.fast_paths("compression")
@pytest.mark.parametrize("crow_site", [False, True])
def test_compressed_echo_in_memory(crow_site: bool) -> None:
    """Compressed messages, whole and fragmented, text and binary, come back compressed by crowtwist."""
    client = DeflateClient(echo_app(), crow_site=crow_site)
    assert client.status == 101
    assert client.headers["sec-websocket-extensions"] == "permessage-deflate"
    assert client.protocol._deflate is not None
    text = '{"id": 7, "text": "the quick brown fox"}' * 50
    client.send_compressed(text.encode())
    client.send_compressed(os.urandom(5000), F.BINARY, pieces=3)
    client.send_compressed(("é" * 4000).encode(), pieces=7)
    client.send_text("plain")  # RSV1 clear: an uncompressed message on a compressed connection
    replies = client.replies()
    assert [first for first, _ in replies[:3]] == [0xC1, 0xC2, 0xC1]
    assert replies[0][1] == text.encode() and len(replies[1][1]) == 5000
    assert replies[2][1].decode() == "é" * 4000
    assert replies[3][1] == b"plain"


@pytest.mark.fast_paths("compression")
@pytest.mark.parametrize(
    ("send", "code"),
    [
        (lambda c: c.send(F.PING, b"x", rsv=4), 1002),  # RSV1 on a control frame
        (lambda c: (c.send(F.TEXT, client_deflate(b"ab", deflater=c.deflater)[:1], fin=False, rsv=4),
                    c.send(F.CONT, b"\x00", rsv=4)), 1002),  # RSV1 on a continuation frame
        (lambda c: c.send(F.TEXT, b"\xff\xff\xff\xff", rsv=4), 1007),  # not deflate
        (lambda c: c.send_compressed(b"\xff\xfe"), 1007),  # not UTF-8 once inflated
        (lambda c: c.send_compressed(b"\xc3" + b"a" * 100, pieces=3), 1007),  # nor fragmented
        (lambda c: c.send(F.TEXT, b"x", rsv=2), 1002),  # RSV2: no extension uses it
        (lambda c: c.send_compressed(b"a" * 2000), 1009),  # inflates past max_payload
        (lambda c: c.send_compressed(b"a" * 2000, pieces=4), 1009),
        (lambda c: (c.send_compressed(b"a", pieces=1), c.send(F.TEXT, b"a", fin=False),
                    c.send(F.TEXT, client_deflate(b"b", deflater=c.deflater), rsv=4)), 1002),  # new message inside one
    ],
)
def test_failures_in_memory(send: Any, code: int) -> None:
    client = DeflateClient(echo_app(max_payload=1000))
    send(client)
    frame = client.close_frame()
    assert frame is not None and frame.close_code == code


@pytest.mark.fast_paths("compression")
def test_max_payload_change_applies_to_the_inflater() -> None:
    client = DeflateClient(echo_app())
    client.protocol.set_max_payload(10)
    client.send_compressed(b"a" * 11)
    frame = client.close_frame()
    assert frame is not None and frame.close_code == 1009


@pytest.mark.fast_paths("compression")
def test_broadcast_to_a_compressed_connection() -> None:
    """A broadcast's shared frame is plain; a compressed connection frames (and deflates) its own."""
    app = Crow()
    rule = app.route("/").websocket()
    plain = MemoryClient(app)
    compressed = DeflateClient(app)
    rule.broadcast("x" * 3000)
    assert plain.messages() == ["x" * 3000]
    assert compressed.replies() == [(0xC1, b"x" * 3000)]


@pytest.mark.fast_paths("compression")
def test_split_at_every_byte() -> None:
    """Two compressed messages and a ping, fed one byte at a time."""
    client = DeflateClient(echo_app())
    zeros = client_deflate(b"\x00" * 300, deflater=client.deflater)
    data = b"".join(
        (
            F.encode(F.TEXT, client_deflate(b"hello hello hello", deflater=client.deflater), rsv=4),
            F.encode(F.PING, b"p"),
            F.encode(F.BINARY, zeros[:3], fin=False, rsv=4),
            F.encode(F.CONT, zeros[3:]),
        )
    )
    for index in range(len(data)):
        client.protocol.dataReceived(data[index : index + 1])
    replies = client.replies()
    assert [first for first, _ in replies] == [0xC1, 0x8A, 0xC2]
    assert replies[0][1] == b"hello hello hello" and replies[2][1] == b"\x00" * 300


@pytest.mark.fast_paths("compression")
def test_fallback_when_the_guard_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the guard's say-so, compressed connections are served by autobahn's frame machinery, still correctly."""
    monkeypatch.setattr(_guard, "_deflate_fast", False)
    client = DeflateClient(echo_app())
    assert client.protocol._deflate is None and client.protocol._parser is None
    client.send_compressed(b"hello" * 100)
    assert client.replies() == [(0xC1, b"hello" * 100)]


def test_the_guard_passes() -> None:
    assert _guard.DEFLATE_PROBLEMS == [] or _guard.PROBLEMS or _guard.is_forced_public("deflate")
    assert _guard.deflate_problems() == _guard.DEFLATE_PROBLEMS


def test_the_guard_notices_a_renamed_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_guard, "DEFLATE_ATTRIBUTES", (*_guard.DEFLATE_ATTRIBUTES, "server_window_size"))
    monkeypatch.setattr(_guard, "PROBLEMS", [])
    monkeypatch.delenv("CROWTWIST_PUBLIC_PATHS", raising=False)
    assert "server_window_size" in _guard.deflate_problems()[0]


# Real sockets, clients we did not write.


OFFERS = [
    {},
    {"client_max_window_bits": 10},
    {"server_max_window_bits": 9, "client_max_window_bits": 9},
    {"server_no_context_takeover": True, "client_no_context_takeover": True},
]


@pytest.mark.fast_paths("compression")
@pytest.mark.parametrize("offer", OFFERS)
@pytest_twisted.inlineCallbacks
def test_websockets_client(serve: Any, offer: dict[str, Any]) -> Iterator[Any]:  # noqa: F811
    """websockets' client: context takeover agreed unless asked otherwise, every parameter honoured."""
    port = serve(ws_app())
    messages = ['{"id": %d, "user": "crow", "text": "the quick brown fox"}' % i * 30 for i in range(20)]
    messages += [os.urandom(70000), "é" * 50000]

    def client() -> tuple[str, list[Any]]:
        factory = ClientPerMessageDeflateFactory(**offer)
        with connect(f"ws://127.0.0.1:{port}/ws", extensions=[factory], compression=None, open_timeout=10) as ws:
            replies = []
            for message in messages:
                ws.send(message)
                replies.append(ws.recv(timeout=10))
            return ws.response.headers["Sec-WebSocket-Extensions"], replies

    header, replies = yield within(deferToThread(client))
    assert replies == messages
    assert ("client_no_context_takeover" in header) is bool(offer.get("client_no_context_takeover"))
    for name, value in offer.items():
        if name.startswith("server_"):
            assert (name if value is True else f"{name}={value}") in header


def ws_app() -> Crow:
    app = Crow()
    app.route("/ws").websocket().onmessage(
        lambda conn, data, is_binary: conn.send_binary(data) if is_binary else conn.send_text(data)
    )
    return app


@pytest.mark.fast_paths("compression")
@pytest_twisted.inlineCallbacks
def test_autobahn_client(serve: Any) -> Iterator[Any]:  # noqa: F811
    """autobahn's client with permessage-deflate: its own compressor, context takeover both ways."""
    from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponseAccept

    port = serve(ws_app())
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/ws")
    factory.protocol = AutobahnClient
    factory.setProtocolOptions(
        perMessageCompressionOffers=[PerMessageDeflateOffer()],
        perMessageCompressionAccept=lambda response: PerMessageDeflateResponseAccept(response),
    )
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
    client = yield within(endpoint.connect(factory))
    yield within(client.is_open)
    for message in (b"abc" * 1000, b"x", os.urandom(100_000)):
        client.sendMessage(message, isBinary=True)
        payload, is_binary = yield within(client.next_message())
        assert payload == message and is_binary
    assert client.websocket_extensions_in_use
    client.sendClose(1000)
    was_clean, code, _ = yield within(client.closed_with)
    assert was_clean and code == 1000


@pytest.mark.fast_paths("compression")
def test_memory_saving_mode() -> None:
    """compression_context_takeover off: the client is asked for client_no_context_takeover, and the
    connection holds no zlib state between messages, yet messages still round-trip."""
    app = echo_app()
    app.settings.compression_context_takeover = False
    client = DeflateClient(app)
    assert client.headers["sec-websocket-extensions"] == "permessage-deflate; client_no_context_takeover"
    for _ in range(3):
        client.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)  # the client forgets its context too
        client.send_compressed(b"hello " * 200)
        assert client.protocol._deflate._inflater is None and client.protocol._deflate._deflater is None
    assert [message for _, message in client.replies()] == [b"hello " * 200] * 3


def test_own_context_dropped_without_asking() -> None:
    """keep_context=False compresses each message alone, which a peer keeping its inflater reads as well."""
    server = DeflateCodec(keep_context=False)
    inflater = zlib.decompressobj(-15)
    message = os.urandom(300)
    first, second = server.compress(message), server.compress(message)
    assert first == second
    assert client_inflate(first, inflater=inflater) == client_inflate(second, inflater=inflater) == message


def test_bound_lowered_mid_message() -> None:
    """A bound lowered below what a message has inflated to already fails it at its next frame."""
    data = client_deflate(b"a" * 3000)
    server = DeflateCodec(max_size=10_000)
    server.start()
    server.inflate(data[:10], False)
    server.max_size = 1
    with pytest.raises(ProtocolError) as raised:
        server.inflate(data[10:], True)
    assert raised.value.code == 1009


@pytest.mark.fast_paths("compression")
@given(
    st.lists(st.tuples(st.text(max_size=300), st.integers(1, 4)), min_size=1, max_size=4),
    st.lists(st.integers(1, 50), min_size=1, max_size=20),
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_split_of_compressed_fragments(messages: list[tuple[str, int]], reads: list[int]) -> None:
    """Compressed text messages in any number of fragments, read in pieces of any size, echo back whole."""
    client = DeflateClient(echo_app())
    wire = b""
    for text, pieces in messages:
        data = client_deflate(text.encode(), deflater=client.deflater)
        size = -(-len(data) // pieces) or 1
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        for index, chunk in enumerate(chunks):
            wire += F.encode(F.TEXT if index == 0 else F.CONT, chunk, fin=index == len(chunks) - 1,
                             rsv=4 if index == 0 else 0)
    pos = 0
    turn = 0
    while pos < len(wire):
        step = reads[turn % len(reads)]
        client.protocol.dataReceived(wire[pos : pos + step])
        pos += step
        turn += 1
    assert [message.decode() for _, message in client.replies()] == [text for text, _ in messages]
