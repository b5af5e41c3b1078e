"""Port of Crow's ``examples/websocket/example_ws.cpp``: a WebSocket every message of which goes to everyone.

    twistd -n crow --routes examples.crow.websocket --listen tcp:40080:interface=127.0.0.1

Open http://127.0.0.1:40080/ in two tabs (Crow's port, 40080, and its page,
``static/ws.html``) and type in either.

Crow keeps the connections in a ``std::unordered_set`` behind a mutex; one
reactor thread runs every handler here, so a plain set needs no lock (and
``rule.connections`` would do the same job).  Crow renders its page with
mustache to put the host name in the script; the page here reads it from
``location``.

Added beyond Crow's file, to show what its API offers: ``/proto``, a route
speaking the subprotocols ``chat.v2`` and ``chat.v1`` (ours, in order of
preference), with ``onaccept`` refusing clients that offer neither,
``userdata`` carried from ``onaccept`` to the connection, and
``close(reason, code)`` with one of Crow's ``CloseStatusCode`` names.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web.server import Request as TwistedRequest

from crowtwist import CloseStatusCode, Connection, Crow, Response

from . import STATIC

log = Logger(namespace="examples.crow.websocket")

app = Crow()

users: set[Connection] = set()


def opened(conn: Connection) -> None:
    log.info("new websocket connection from {ip}", ip=conn.get_remote_ip())
    users.add(conn)


def closed(conn: Connection, reason: str, code: int) -> None:
    log.info("websocket connection closed: {reason}", reason=reason)
    users.discard(conn)


def message(conn: Connection, data: str | bytes, is_binary: bool) -> None:
    for u in list(users):
        if isinstance(data, bytes):                     # is_binary
            u.send_binary(data)
        else:
            u.send_text(data)


(app.route("/ws")                                       # CROW_WEBSOCKET_ROUTE(app, "/ws")
    .websocket()
    .onopen(opened)
    .onclose(closed)
    .onmessage(message))

app.static_file("/", STATIC / "ws.html")                # Crow: crow::mustache::load("ws.html").render(x)


# Subprotocols: not in Crow's file (see the docstring).

PROTOCOLS = ["chat.v2", "chat.v1"]

proto = app.route("/proto").websocket().subprotocols(PROTOCOLS)


@proto.onaccept
def accept(req: TwistedRequest) -> bool | Response:
    # onaccept is given twisted.web's request (getHeader), before the 101.
    offered = [p.strip() for p in (req.getHeader("sec-websocket-protocol") or "").split(",") if p.strip()]
    if not set(offered) & set(PROTOCOLS):
        return Response(400, f"speak one of {', '.join(PROTOCOLS)} (Sec-WebSocket-Protocol)\n")
    req.userdata = offered  # type: ignore[attr-defined]  # Crow: *userdata = ...; read as conn.userdata
    return True


@proto.onopen
def greet(conn: Connection) -> None:
    conn.send_text(f"speaking {conn.get_subprotocol()}; you offered {', '.join(conn.userdata)}")


@proto.onmessage
def echo(conn: Connection, data: str | bytes, is_binary: bool) -> None:
    if data == "bye":
        conn.close("bye", CloseStatusCode.NormalClosure)
    elif isinstance(data, bytes):
        conn.send_binary(data)
    else:
        conn.send_text(data)


if __name__ == "__main__":
    app.port(40080).run()
