"""The receive and send fast paths: the same messages and the same failures as autobahn's
general path, whatever the read boundaries."""

from __future__ import annotations

import os
from typing import Any

import pytest

from crowtwist import Crow
from crowtwist.websocket.protocol import _unmask

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


def test_unmask_matches_the_definition() -> None:
    """The big-integer unmasking equals RFC 6455's byte-by-byte XOR, for every length."""
    key = os.urandom(4)
    for length in list(range(0, 70)) + [125, 126, 127, 65535]:
        payload = os.urandom(length)
        expected = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        assert _unmask(payload, key) == expected


STREAM = [
    (F.encode(F.TEXT, "héllo".encode()), ("héllo", False)),
    (F.encode(F.BINARY, b"\x00\x01\x02"), (b"\x00\x01\x02", True)),
    (F.encode(F.TEXT, b"x" * 300), ("x" * 300, False)),  # 16-bit length
    (F.encode(F.PING, b"p"), None),  # control frame: the general path, then back
    (F.encode(F.TEXT, b"frag", fin=False) + F.encode(F.CONT, b"ment"), ("fragment", False)),
    (F.encode(F.BINARY, b"y" * 70000), (b"y" * 70000, True)),  # 64-bit length: the general path
    (F.encode(F.TEXT, b""), ("", False)),
    (F.encode(F.TEXT, "€".encode()), ("€", False)),
]


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, 64, 1000, 1 << 20])
def test_any_read_boundaries(step: int) -> None:
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


def test_every_split_point_of_one_frame() -> None:
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


def test_compressed_connections_take_the_general_path() -> None:
    """With permessage-deflate negotiated the fast paths stand aside."""
    app, _ = echo_app()
    client = MemoryClient(app, "/ws", {"Sec-WebSocket-Extensions": "permessage-deflate"})
    assert client.protocol._plain is False
    plain = MemoryClient(app, "/ws")
    assert plain.protocol._plain is True


def test_data_frame_inside_a_fragmented_message_is_still_a_violation() -> None:
    """A whole text frame arriving, in its own read, while a fragmented message is open fails with 1002."""
    app, seen = echo_app()
    client = MemoryClient(app, "/ws")
    client.protocol.dataReceived(F.encode(F.TEXT, b"frag", fin=False))
    client.protocol.dataReceived(F.encode(F.TEXT, b"intruder"))
    assert seen == []
    assert client.close_frame().close_code == 1002  # type: ignore[union-attr]
