"""Routes for the broker tests, served by ``twistd crow --routes tests.broker_routes --broker ...``.

``/room/<string>``: joins that room; each message is published to it.
``/all``: each message is broadcast to every ``/all`` connection.
``/pid``: an HTTP route answering this process's id.
``/whoami``: a WebSocket that says this process's id when it opens, and is in the room ``w``.
"""

from __future__ import annotations

import os

from crowtwist import Connection, Crow

app = Crow()


@app.route("/pid")
def pid(request: object) -> str:
    return str(os.getpid())


room = app.route("/room/<string>").websocket()


@room.onopen
def joined(conn: Connection) -> None:
    conn.join(str(conn.params[0]))


room.onmessage(lambda conn, data, is_binary: app.publish(str(conn.params[0]), data))

everyone = app.route("/all").websocket()
everyone.onmessage(lambda conn, data, is_binary: everyone.broadcast(data))

whoami = app.route("/whoami").websocket()


@whoami.onopen
def say_pid(conn: Connection) -> None:
    conn.join("w")
    conn.send_text(str(os.getpid()))


whoami.onmessage(lambda conn, data, is_binary: app.publish("w", data))
