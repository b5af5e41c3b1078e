"""The examples, served on 127.0.0.1 and driven by autobahn's client."""

from __future__ import annotations

from typing import Any
from collections.abc import Iterator

import pytest_twisted

from examples import auth, chat, demo, echo

from .clients import connect_autobahn, connect_raw, within
from .test_end_to_end import serve  # noqa: F401  (fixture)


@pytest_twisted.inlineCallbacks
def test_echo_example(serve: Any) -> Iterator[Any]:  # noqa: F811
    """examples.echo echoes text and binary at / and /echo."""
    port = serve(echo.app)
    for path in ("/", "/echo"):
        client = yield connect_autobahn(port, path)
        client.sendMessage(b"\xff\x00", True)
        assert (yield client.next_message()) == (b"\xff\x00", True)
        client.sendMessage(b"text", False)
        assert (yield client.next_message()) == (b"text", False)
        client.sendClose(1000)
        yield within(client.closed_with)


@pytest_twisted.inlineCallbacks
def test_chat_example_broadcasts(serve: Any) -> Iterator[Any]:  # noqa: F811
    """examples.chat sends each message to every open connection of the route."""
    port = serve(chat.app)
    first = yield connect_autobahn(port, "/chat")
    assert (yield first.next_message())[0].endswith(b"joined (1 here)")
    second = yield connect_autobahn(port, "/chat")
    assert (yield first.next_message())[0].endswith(b"joined (2 here)")
    assert (yield second.next_message())[0].endswith(b"joined (2 here)")
    second.sendMessage(b"hello all", False)
    assert (yield first.next_message()) == (b"hello all", False)
    assert (yield second.next_message()) == (b"hello all", False)
    second.sendClose(1000)
    yield within(second.closed_with)
    assert (yield first.next_message())[0].endswith(b"left")
    first.sendClose(1000)
    yield within(first.closed_with)


@pytest_twisted.inlineCallbacks
def test_auth_example(serve: Any) -> Iterator[Any]:  # noqa: F811
    """examples.auth refuses a missing token with 401 and carries the user to the handlers."""
    port = serve(auth.app)
    raw = yield connect_raw(port)
    head = yield raw.handshake("/auth/lobby")
    assert head.startswith(b"HTTP/1.1 401")
    raw.transport.loseConnection()
    client = yield connect_autobahn(port, "/auth/lobby?token=s3cret")
    assert (yield client.next_message()) == (b"welcome ann to lobby", False)
    client.sendMessage(b"hi", False)
    assert (yield client.next_message()) == (b"ann: hi", False)
    client.sendClose(1000)
    yield within(client.closed_with)


def test_demo_serves_every_example() -> None:
    """examples.demo declares the echo, chat and auth routes in one app."""
    patterns = {rule.pattern for rule in demo.app.websocket_rules}
    assert patterns == {"/", "/echo", "/chat", "/auth/<string>"}
