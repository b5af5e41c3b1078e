"""Property-based fuzzing of a connection: random and mutated bytes after a valid handshake,
and random bytes as the handshake itself.

Whatever arrives, the server never raises out of the protocol, ends with a close frame that
carries a valid code or with the connection dropped, runs onclose exactly once for a connection
that opened, and keeps no connection in rule.connections afterwards.
CI runs a bounded number of examples; CROWTWIST_FUZZ_EXAMPLES=20000 runs longer.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crowtwist import Crow

from . import frames as F
from .memory import MemoryClient

EXAMPLES = int(os.environ.get("CROWTWIST_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VALID_CLOSE_CODES = {1000, 1001, 1002, 1003, *range(1007, 1015)} | set(range(3000, 5000))


def make_app(enforce: bool) -> tuple[Crow, list[Any]]:
    app = Crow(enforce_ws_spec=enforce).websocket_max_payload(4096)
    log: list[Any] = []
    (
        app.route("/ws")
        .websocket()
        .onmessage(lambda conn, data, is_binary: conn.send_binary(data) if is_binary else conn.send_text(data))
        .onerror(lambda conn, message: log.append(("error", message)))
        .onclose(lambda conn, reason, code: log.append(("close", code)))
    )
    return app, log


def frame_strategy() -> st.SearchStrategy[bytes]:
    valid = st.builds(
        lambda opcode, payload, fin, mask, rsv: F.encode(opcode, payload, fin=fin, mask=mask, rsv=rsv),
        st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB]),
        st.binary(max_size=300),
        st.booleans(),
        st.booleans(),
        st.sampled_from([0, 0, 0, 1, 2, 4]),
    )
    close = st.builds(
        lambda code, reason: F.encode(F.CLOSE, struct.pack("!H", code) + reason),
        st.integers(0, 65535),
        st.binary(max_size=20),
    )
    return st.one_of(valid, close, st.binary(min_size=1, max_size=64))


def check_end(client: MemoryClient, log: list[Any], opened: bool) -> None:
    frames = client.received()
    closes = [f for f in frames if f.opcode == F.CLOSE]
    if closes:
        code = closes[0].close_code
        assert code is None or code in VALID_CLOSE_CODES, code
    # StringTransport never reports the end of the connection; a real transport does,
    # once, whether the server or the peer ended it.
    client.drop(clean=client.transport.disconnecting)
    if opened:
        assert sum(1 for e in log if e[0] == "close") == 1, log


@FUZZ
@given(chunks=st.lists(frame_strategy(), max_size=12), split=st.integers(1, 50), enforce=st.booleans())
def test_random_frames_after_handshake(chunks: list[bytes], split: int, enforce: bool) -> None:
    """Random, mutated and valid frames, delivered in arbitrary pieces, never break the server."""
    app, log = make_app(enforce)
    client = MemoryClient(app, "/ws")
    assert client.status == 101
    data = b"".join(chunks)
    for i in range(0, len(data), split):
        client.protocol.dataReceived(data[i : i + split])
    check_end(client, log, opened=True)
    assert len(app.websocket_rules[0].connections) == 0


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes_as_handshake(data: bytes) -> None:
    """Random bytes instead of a handshake get an HTTP answer or a closed connection, never an exception."""
    app, log = make_app(False)
    client = MemoryClient(app, raw=data or b"\r\n")
    if client.status_line.startswith("HTTP/1.1 101"):
        client.drop()
    assert sum(1 for e in log if e[0] == "close") <= 1
    client.transport.loseConnection()


@FUZZ
@given(
    mutations=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_handshake(mutations: list[tuple[int, int]]) -> None:
    """A valid handshake with bytes flipped is answered or refused cleanly."""
    raw = bytearray(F.handshake("/ws", {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}))
    for position, value in mutations:
        raw[position % len(raw)] = value
    app, log = make_app(False)
    client = MemoryClient(app, raw=bytes(raw))
    if client.status_line.startswith("HTTP/1.1 101"):
        client.send_text("after")
        client.drop()
        assert sum(1 for e in log if e[0] == "close") == 1
