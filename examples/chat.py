"""Chat: rooms from the URL, a name per person, joined and left notices, timestamps.

    twistd -n crow --routes examples.chat       # then open http://127.0.0.1:18080/

- ``/`` redirects to ``room/lobby``; ``/room/<name>`` is the page (``examples/chat/``:
  HTML, CSS and JavaScript served by the app, no build step, nothing from a CDN);
- ``/chat/<room>?name=<name>`` is the WebSocket.  Each room is a crowtwist room
  (``conn.join``, ``app.publish``), so with ``--broker`` it spans processes.

The page builds the WebSocket's URL relative to itself (``wss:`` under ``https:``, a
mount prefix kept), reconnects with a bounded, jittered backoff, and keeps what is
typed while offline in an outbox that it sends on reconnect.

The protocol is JSON in text frames.  The client sends ``{"type": "say", "id": ID,
"text": TEXT}`` and ``{"type": "ping"}``.  The server sends, each with its ``time`` in
milliseconds since the epoch: ``welcome`` (the normalised room and name, and the room's
``recent`` messages), ``joined`` and ``left`` (a ``name``), ``message`` (``name``,
``text``, the sender's ``id`` so that its page knows it arrived, and the server's own
``mid``), ``error`` (to the sender alone, with the ``id``) and ``pong``.

The server trusts nothing the client says: names and rooms are normalised and
validated, a message is bounded and stripped of control characters, and an empty one
is refused.  It escapes nothing, because the page only ever puts text into the
document as text (``textContent``).
"""

from __future__ import annotations

import json
import re
import secrets
import time
import unicodedata
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crowtwist import BadRequest, Connection, Crow, Response

MAX_NAME = 32
"""Characters in a person's name, after normalisation."""
MAX_ROOM = 64
"""Characters in a room's name."""
MAX_TEXT = 2000
"""Characters in one message (the page's input has the same ``maxlength``)."""
MAX_ID = 40
"""Characters in the id a client gives its message."""
MAX_FRAME = 32 * 1024
"""The largest frame the route takes (MAX_TEXT characters as JSON, escaped, with room to spare); more is 1009."""
REFUSED = 1008
"""The close code for a name the server will not take: the page asks for another rather than reconnect."""
RECENT_MESSAGES = 50
"""Messages of a room kept to replay to whoever (re)joins it..."""
RECENT_BYTES = 64 * 1024
"""...at most this many bytes of them per room..."""
RECENT_ROOMS = 256
"""...for at most this many rooms, the least recently used forgotten first."""

ASSETS = Path(__file__).resolve().parent / "chat"
# Nothing but this app's own origin: no inline script, no CDN; 'self' covers ws:/wss: to it.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Letters, marks, digits, punctuation, symbols and spaces; not controls, format characters
# (bidi overrides, zero-width joiners), line separators, surrogates or unassigned code points.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_SPACES = re.compile(r"\s+")
_ID = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_ID)


@dataclass
class Member:
    """What ``onaccept`` learnt about a connection, kept in ``conn.userdata``."""

    room: str
    name: str | None
    problem: str | None
    joined: bool = False


class Recent:
    """The last messages published to each room through this process, bounded in count, bytes and rooms.

    Replayed in the welcome, so that whoever reconnects sees what was said while they were away
    (a server restart, a phone asleep), and a sender whose acknowledgement was lost learns that its
    message did arrive instead of sending it twice.  It lives in memory: a restart forgets it, and
    with a broker each process knows only what it published itself.
    """

    def __init__(self) -> None:
        self._rooms: OrderedDict[str, deque[tuple[dict[str, Any], int]]] = OrderedDict()
        self._sizes: dict[str, int] = {}

    def add(self, room: str, event: dict[str, Any], size: int) -> None:
        kept = self._rooms.get(room)
        if kept is None:
            kept = self._rooms[room] = deque()
            self._sizes[room] = 0
            while len(self._rooms) > RECENT_ROOMS:
                gone, _ = self._rooms.popitem(last=False)
                del self._sizes[gone]
        self._rooms.move_to_end(room)
        kept.append((event, size))
        self._sizes[room] += size
        while len(kept) > RECENT_MESSAGES or self._sizes[room] > RECENT_BYTES:
            self._sizes[room] -= kept.popleft()[1]

    def of(self, room: str) -> list[dict[str, Any]]:
        return [event for event, _ in self._rooms.get(room, ())]


def clean_label(text: str, what: str, limit: int) -> str:
    """``text`` as a name or room: NFC, trimmed, inner spaces as one; ValueError saying what is wrong."""
    text = _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()
    if not text:
        raise ValueError(f"a {what} may not be empty")
    if len(text) > limit:
        raise ValueError(f"a {what} has at most {limit} characters")
    for char in text:
        if unicodedata.category(char) in _REFUSED_CATEGORIES or char == "/":
            raise ValueError(f"a {what} may not contain {_describe(char)}")
    return text


def clean_text(text: str) -> str:
    """A message's text: controls other than newline and tab removed, trimmed; ValueError when empty or too long."""
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cs")).strip()
    if not text:
        raise ValueError("an empty message is not sent")
    if len(text) > MAX_TEXT:
        raise ValueError(f"a message has at most {MAX_TEXT} characters, not {len(text)}")
    return text


def _describe(char: str) -> str:
    return f"U+{ord(char):04X}" if char != "/" else "'/'"


def _now() -> int:
    return int(time.time() * 1000)


def _event(kind: str, **fields: Any) -> str:
    return _encode({"type": kind, "time": _now(), **fields})


def _encode(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def _channel(room: str) -> str:
    # Rooms are app-wide; a prefix keeps the chat's apart from other examples' in the same app.
    return "chat:" + room


def _asset(name: str) -> Response:
    path = ASSETS / name
    return Response(200, path.read_bytes(), {"Content-Type": _TYPES[path.suffix], **SECURITY_HEADERS})


def add_routes(app: Crow) -> None:
    """Declare the chat's pages, assets and WebSocket route on ``app``."""

    @app.route("/")
    def landing() -> Response:
        # Relative, so that a mount prefix stays: /crow/ -> /crow/room/lobby (and /crow is
        # redirected to /crow/ by crowtwist first).
        return Response(303, b"", {"Location": "room/lobby"})

    @app.route("/room/<string>")
    def page(request: Any, room: str) -> Response:
        try:
            clean_label(room, "room's name", MAX_ROOM)
        except ValueError as error:
            raise BadRequest(str(error)) from None
        return _asset("index.html")

    app.route("/chat.js")(lambda request: _asset("chat.js"))
    app.route("/chat.css")(lambda request: _asset("chat.css"))
    app.route("/chat-icon.svg")(lambda request: _asset("icon.svg"))

    rule = app.route("/chat/<string>").websocket().max_payload(MAX_FRAME)
    recent = Recent()

    @rule.onaccept
    def admit(request: Any) -> bool | Response:
        try:
            room = clean_label(request.route_params[0], "room's name", MAX_ROOM)
        except ValueError as error:
            return Response(400, f"{error}\n")
        # A bad name is not refused here: a browser is not told why a handshake failed, so the
        # connection opens and closes with 1008 and the reason, which the page shows.
        try:
            request.userdata = Member(room, clean_label(request.url_params.get("name") or "", "name", MAX_NAME), None)
        except ValueError as error:
            request.userdata = Member(room, None, str(error))
        return True

    @rule.onopen
    def joined(conn: Connection) -> None:
        member: Member = conn.userdata
        if member.name is None:
            conn.close(member.problem or "a name is needed", REFUSED)
            return
        conn.send_text(_event("welcome", room=member.room, name=member.name, recent=recent.of(member.room)))
        # Published before joining, so that the others hear of it and the newcomer is welcomed instead.
        app.publish(_channel(member.room), _event("joined", name=member.name))
        conn.join(_channel(member.room))
        member.joined = True

    @rule.onmessage
    def said(conn: Connection, data: str | bytes, is_binary: bool) -> None:
        member: Member = conn.userdata
        if is_binary:
            conn.close("text frames of JSON only", 1003)
            return
        try:
            message = json.loads(data)
        except ValueError:
            conn.send_text(_event("error", id=None, text="a message is a JSON object"))
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "ping":
            conn.send_text(_event("pong"))
            return
        ident = message.get("id") if isinstance(message, dict) else None
        if not isinstance(ident, str) or not _ID.fullmatch(ident):
            ident = None
        if kind != "say" or ident is None or not isinstance(message.get("text"), str):
            conn.send_text(_event("error", id=ident, text='expected {"type": "say", "id": ..., "text": ...}'))
            return
        try:
            text = clean_text(message["text"])
        except ValueError as error:
            conn.send_text(_event("error", id=ident, text=str(error)))
            return
        # "mid" is the server's: unique, for a page to recognise a message it has seen when it is
        # replayed; "id" is the sender's, for its page to know this one arrived.
        event = {"type": "message", "time": _now(), "mid": secrets.token_hex(8), "id": ident, "name": member.name,
                 "text": text}
        encoded = _encode(event)
        recent.add(member.room, event, len(encoded))
        app.publish(_channel(member.room), encoded)

    @rule.onclose
    def left(conn: Connection, reason: str, code: int) -> None:
        member: Member = conn.userdata
        if member.joined:
            app.publish(_channel(member.room), _event("left", name=member.name))


app = Crow()
add_routes(app)

if __name__ == "__main__":
    app.run()
