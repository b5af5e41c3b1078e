"""permessage-deflate (RFC 7692) with the parameters a client may offer, checked with the
websockets library's client over 127.0.0.1."""

from __future__ import annotations

from typing import Any
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect

from crowtwist import Crow

from .clients import within
from .test_end_to_end import serve  # noqa: F401  (fixture)


def echo_app() -> Crow:
    app = Crow()
    app.route("/ws").websocket().onmessage(
        lambda conn, data, is_binary: conn.send_binary(data) if is_binary else conn.send_text(data)
    )
    return app


@pytest.mark.fast_paths("compression")
@pytest.mark.parametrize(
    ("offer", "expected"),
    [
        ({}, ["permessage-deflate"]),
        ({"server_max_window_bits": 10}, ["server_max_window_bits=10"]),
        ({"client_max_window_bits": 12}, ["client_max_window_bits=12"]),
        ({"server_no_context_takeover": True}, ["server_no_context_takeover"]),
        ({"client_no_context_takeover": True}, ["client_no_context_takeover"]),
        (
            {"server_max_window_bits": 9, "client_max_window_bits": 9,
             "server_no_context_takeover": True, "client_no_context_takeover": True},
            ["server_max_window_bits=9", "server_no_context_takeover", "client_no_context_takeover"],
        ),
    ],
)
@pytest_twisted.inlineCallbacks
def test_deflate_parameters(serve: Any, offer: dict[str, Any], expected: list[str]) -> Iterator[Any]:  # noqa: F811
    """Each offered parameter is agreed, and text and binary messages round-trip compressed."""
    port = serve(echo_app())

    def client() -> tuple[str, list[Any]]:
        factory = ClientPerMessageDeflateFactory(**offer)
        with connect(f"ws://127.0.0.1:{port}/ws", extensions=[factory], compression=None, open_timeout=10) as ws:
            replies = []
            for message in ("a" * 5000, b"\x01" * 70000, "short", "é" * 3000):
                ws.send(message)
                replies.append(ws.recv(timeout=10))
            return ws.response.headers["Sec-WebSocket-Extensions"], replies

    header, replies = yield within(deferToThread(client))
    for part in expected:
        assert part in header
    assert replies == ["a" * 5000, b"\x01" * 70000, "short", "é" * 3000]
