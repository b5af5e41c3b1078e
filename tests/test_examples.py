"""The examples, served on 127.0.0.1 and driven by autobahn's client."""

from __future__ import annotations

import json
import time
import unicodedata
from typing import Any
from collections.abc import Iterator
from urllib.parse import urljoin

import pytest
import pytest_twisted
from hypothesis import given, strategies as st
from twisted.web.resource import Resource

from crowtwist import Crow

from examples import auth, chat, demo, echo

from .clients import connect_autobahn, connect_raw, within
from .http_client import fetch
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


def _event(raw: tuple[bytes, bool]) -> dict[str, Any]:
    """A chat server's event, checked to be a JSON text frame with the server's time."""
    payload, is_binary = raw
    assert not is_binary
    event = json.loads(payload)
    assert isinstance(event["time"], int) and abs(event["time"] / 1000 - time.time()) < 60
    return dict(event)


def _chat_app() -> Crow:
    """A fresh chat app: its recent messages start empty."""
    app = Crow()
    chat.add_routes(app)
    return app


def _say(client: Any, text: object, ident: object = "m1") -> None:
    client.sendMessage(json.dumps({"type": "say", "id": ident, "text": text}).encode(), False)


@pytest_twisted.inlineCallbacks
def test_chat_example_rooms_names_and_notices(serve: Any) -> Iterator[Any]:  # noqa: F811
    """examples.chat welcomes each person by name, tells the room who joined and left, and a
    message reaches everyone in its room (the sender too, with its id) and no other room."""
    port = serve(_chat_app())
    ann = yield connect_autobahn(port, "/chat/lobby?name=ann")
    welcome = _event((yield ann.next_message())) | {"time": 0}
    assert welcome == {"type": "welcome", "room": "lobby", "name": "ann", "recent": [], "time": 0}
    bob = yield connect_autobahn(port, "/chat/lobby?name=%20bob%20%20b.%20")
    assert _event((yield bob.next_message()))["name"] == "bob b."  # trimmed, inner spaces as one
    assert _event((yield ann.next_message())) | {"time": 0} == {"type": "joined", "name": "bob b.", "time": 0}
    eve = yield connect_autobahn(port, "/chat/elsewhere?name=eve")
    assert _event((yield eve.next_message()))["room"] == "elsewhere"

    _say(bob, "  <b>hi</b>\x07 all\n ")
    mids = set()
    for client in (ann, bob):
        event = _event((yield client.next_message()))
        mids.add(event.pop("mid"))
        # Stored and sent as text; the page shows it with textContent, so nothing is escaped here.
        assert event | {"time": 0} == {"type": "message", "id": "m1", "name": "bob b.", "text": "<b>hi</b> all", "time": 0}
    assert len(mids) == 1 and len(mids.pop()) == 16  # one message, one server id
    bob.sendClose(1000)
    yield within(bob.closed_with)
    assert _event((yield ann.next_message())) | {"time": 0} == {"type": "left", "name": "bob b.", "time": 0}
    _say(eve, "only here")
    assert _event((yield eve.next_message()))["text"] == "only here"
    assert ann.messages.pending == []  # nothing from the other room
    for client in (ann, eve):
        client.sendClose(1000)
        yield within(client.closed_with)


@pytest_twisted.inlineCallbacks
def test_chat_example_replays_recent_messages(serve: Any) -> Iterator[Any]:  # noqa: F811
    """Whoever (re)joins a room is welcomed with its recent messages, so what was said while they were
    away is not lost to them, and a sender whose echo never came sees its message did arrive."""
    port = serve(_chat_app())
    ann = yield connect_autobahn(port, "/chat/replay?name=ann")
    yield ann.next_message()
    for n in range(3):
        _say(ann, f"while bob was away {n}", f"a{n}")
        yield ann.next_message()
    ann.transport.abortConnection()  # its last echo may never have been read
    bob = yield connect_autobahn(port, "/chat/replay?name=bob")
    welcome = _event((yield bob.next_message()))
    assert [(m["id"], m["name"], m["text"]) for m in welcome["recent"]] == [
        (f"a{n}", "ann", f"while bob was away {n}") for n in range(3)
    ]
    assert len({m["mid"] for m in welcome["recent"]}) == 3
    bob.sendClose(1000)
    yield within(bob.closed_with)


def test_chat_recent_messages_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay keeps at most RECENT_MESSAGES and RECENT_BYTES per room, for at most RECENT_ROOMS rooms."""
    recent = chat.Recent()
    for n in range(chat.RECENT_MESSAGES + 5):
        recent.add("a", {"n": n}, 10)
    assert [e["n"] for e in recent.of("a")] == list(range(5, chat.RECENT_MESSAGES + 5))
    recent.add("a", {"n": "big"}, chat.RECENT_BYTES - 25)
    assert [e["n"] for e in recent.of("a")] == [chat.RECENT_MESSAGES + 3, chat.RECENT_MESSAGES + 4, "big"]
    recent.add("a", {"n": "huge"}, chat.RECENT_BYTES + 1)  # more than a room may keep: kept nowhere
    assert recent.of("a") == []
    monkeypatch.setattr(chat, "RECENT_ROOMS", 3)
    for room in ("b", "c", "a", "d"):  # "a" used again: "b" is the least recently used
        recent.add(room, {"room": room}, 1)
    assert recent.of("b") == [] and [e["room"] for e in recent.of("a")] == ["a"]
    assert recent.of("c") and recent.of("d")


@pytest.mark.fast_paths("close code")
@pytest_twisted.inlineCallbacks
def test_chat_example_refuses_what_it_should_not_trust(serve: Any) -> Iterator[Any]:  # noqa: F811
    """Empty, oversized and malformed messages are answered with an error to the sender alone, a
    binary frame closes with 1003, a frame over the route's bound with 1009, and a ping gets a pong."""
    port = serve(_chat_app())
    ann = yield connect_autobahn(port, "/chat/lobby?name=ann")
    yield ann.next_message()
    cases: list[tuple[bytes, object, str]] = [
        (json.dumps({"type": "say", "id": "e1", "text": " \t\n "}).encode(), "e1", "an empty message is not sent"),
        (json.dumps({"type": "say", "id": "e2", "text": "x" * 2001}).encode(), "e2", "at most 2000 characters"),
        (json.dumps({"type": "say", "id": "e3", "text": 7}).encode(), "e3", "expected"),
        (json.dumps({"type": "say", "id": "bad id!", "text": "x"}).encode(), None, "expected"),
        (json.dumps({"type": "shout", "id": "e4"}).encode(), "e4", "expected"),
        (b"[1, 2]", None, "expected"),
        (b"not json", None, "a message is a JSON object"),
    ]
    for frame, ident, problem in cases:
        ann.sendMessage(frame, False)
        event = _event((yield ann.next_message()))
        assert event["type"] == "error" and event["id"] == ident and problem in event["text"], (frame, event)
    _say(ann, "y" * 2000)  # the bound itself is fine
    assert len(_event((yield ann.next_message()))["text"]) == 2000
    ann.sendMessage(b'{"type": "ping"}', False)
    assert _event((yield ann.next_message()))["type"] == "pong"
    ann.sendMessage(b"\x00", True)
    assert (yield within(ann.closed_with))[1] == 1003

    big = yield connect_autobahn(port, "/chat/lobby?name=big")
    yield big.next_message()
    big.sendMessage(b'{"type": "say", "id": "b", "text": "' + b"z" * chat.MAX_FRAME + b'"}', False)
    assert (yield within(big.closed_with))[1] == 1009


@pytest.mark.parametrize(
    "query, problem",
    [
        ("", "a name may not be empty"),
        ("?name=%20%20", "a name may not be empty"),
        ("?name=" + "n" * 33, "at most 32 characters"),
        ("?name=a%E2%80%AEb", "U+202E"),  # a bidi override
        ("?name=a%0Ab", None),  # a newline is a space, and spaces collapse: "a b"
        ("?name=a%00b", "U+0000"),
        ("?name=a%2Fb", "'/'"),
    ],
)
@pytest.mark.fast_paths("close code")
@pytest_twisted.inlineCallbacks
def test_chat_example_validates_names(serve: Any, query: str, problem: str | None) -> Iterator[Any]:  # noqa: F811
    """A name that is empty, too long or holds controls, format characters or '/' is refused with
    1008 and the reason, which the page shows; the connection never joins the room."""
    port = serve(_chat_app())
    client = yield connect_autobahn(port, "/chat/lobby" + query)
    if problem is None:
        assert _event((yield client.next_message()))["name"] == "a b"
        client.sendClose(1000)
        yield within(client.closed_with)
        return
    _, code, reason = yield within(client.closed_with)
    assert code == chat.REFUSED and problem in (reason or ""), (code, reason)
    assert client.messages.pending == []


@pytest_twisted.inlineCallbacks
def test_chat_example_pages_and_rooms_over_http(serve: Any) -> Iterator[Any]:  # noqa: F811
    """/ redirects to room/lobby relative to itself (a mount prefix kept, with or without its
    slash), /room/<name> is the page with a strict CSP, its assets are served, and a bad room is 400."""
    port = serve(_chat_app())
    landing = yield fetch(port, "GET", "/")
    assert landing.status == 303 and landing.header("location") == "room/lobby"
    page = yield fetch(port, "GET", "/room/caf%C3%A9")
    assert page.status == 200 and page.header("content-type") == "text/html; charset=utf-8"
    assert "script-src 'self'" in (page.header("content-security-policy") or "")
    assert b'src="../chat.js"' in page.body and b"<script>" not in page.body  # no inline script
    for path, kind in (("/chat.js", "text/javascript"), ("/chat.css", "text/css"), ("/chat-icon.svg", "image/svg+xml")):
        asset = yield fetch(port, "GET", path)
        assert asset.status == 200 and (asset.header("content-type") or "").startswith(kind), path
    for bad in ("/room/a%E2%80%AEb", "/room/" + "r" * 65):
        refused = yield fetch(port, "GET", bad)
        assert refused.status == 400 and b"room's name" in refused.body, bad
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    refused = yield fetch(port, "GET", "/chat/" + "r" * 65 + "?name=ann", upgrade)
    assert refused.status == 400 and b"at most 64 characters" in refused.body

    root = Resource()
    root.putChild(b"crow", _chat_app().resource())
    mounted = serve(root)
    slash = yield fetch(mounted, "GET", "/crow")
    assert (slash.status, slash.header("location")) == (301, "/crow/")
    landing = yield fetch(mounted, "GET", "/crow/")
    assert landing.status == 303
    assert urljoin("http://h/crow/", landing.header("location") or "") == "http://h/crow/room/lobby"


def test_chat_labels_are_normalised_and_bounded() -> None:
    """clean_label: NFC, trimmed, spaces collapsed, bounded; clean_text strips controls but keeps newlines."""
    assert chat.clean_label("  cafe\u0301\t\tau  lait ", "name", 32) == "caf\u00e9 au lait"
    assert chat.clean_label("\U0001f600 z\u00fc", "name", 32) == "\U0001f600 z\u00fc"
    with pytest.raises(ValueError, match="U\\+200D"):
        chat.clean_label("a\u200db", "name", 32)
    assert chat.clean_text(" a\r\nb\x1b[31m ") == "a\nb[31m"


@given(st.text(max_size=80))
def test_chat_clean_label_property(text: str) -> None:
    """Whatever comes in, a label that passes is short, normalised, trimmed and free of refused characters,
    and cleaning it again changes nothing."""
    try:
        label = chat.clean_label(text, "name", chat.MAX_NAME)
    except ValueError:
        return
    assert 0 < len(label) <= chat.MAX_NAME and label == label.strip()
    assert unicodedata.normalize("NFC", label) == label and "  " not in label and "/" not in label
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for c in label)
    assert chat.clean_label(label, "name", chat.MAX_NAME) == label


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
    assert patterns == {"/", "/echo", "/chat/<string>", "/auth/<string>"}
