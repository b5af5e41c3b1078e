"""Chat: every message to ``/chat`` goes to every open connection of that route.

The page at ``/`` is a small browser client.  Broadcasting uses
``rule.connections``, so there is no set and no lock to keep by hand.

    twistd -n crow --routes examples.chat       # then open http://127.0.0.1:18080/
"""

from __future__ import annotations

from typing import Any

from crowtwist import Connection, Crow

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>crowtwist chat</title>
<ul id="log"></ul>
<form id="say"><input id="text" autocomplete="off" autofocus><button>Send</button></form>
<script>
const ws = new WebSocket(`ws://${location.host}/chat`);
const log = document.getElementById("log");
ws.onmessage = (event) => {
  const item = document.createElement("li");
  item.textContent = event.data;
  log.appendChild(item);
};
document.getElementById("say").onsubmit = (event) => {
  event.preventDefault();
  const text = document.getElementById("text");
  ws.send(text.value);
  text.value = "";
};
</script>
"""


def add_routes(app: Crow) -> None:
    """Declare the chat's page and WebSocket route on ``app``."""
    app.route("/")(lambda request: _page())
    room = app.route("/chat").websocket()

    @room.onopen
    def joined(conn: Connection) -> None:
        _broadcast(room.connections, f"{conn.get_remote_ip()} joined ({len(room.connections)} here)")

    @room.onmessage
    def said(conn: Connection, data: str | bytes, is_binary: bool) -> None:
        if not is_binary:
            _broadcast(room.connections, str(data))

    @room.onclose
    def left(conn: Connection, reason: str, code: int) -> None:
        _broadcast(room.connections, f"{conn.get_remote_ip()} left")


def _page() -> Any:
    from crowtwist import Response

    return Response(200, PAGE, {"Content-Type": "text/html; charset=utf-8"})


def _broadcast(connections: Any, text: str) -> None:
    for conn in connections:
        conn.send_text(text)


app = Crow()
add_routes(app)

if __name__ == "__main__":
    app.run()
