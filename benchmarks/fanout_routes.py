"""Routes for benchmarks/fanout.py: one publisher, many listening subscribers.

    twistd -n --pidfile= crow --routes benchmarks.fanout_routes --listen tcp:PORT:interface=127.0.0.1
    (add --broker redis://127.0.0.1:6379/0 to share the subscribers' route between processes)

- ``/sub``: subscribers; they only listen (nothing is sent to them but broadcasts).
- ``/pub``: each message a client sends here is ``sub.broadcast(data)``: one frame
  built once and written to every open ``/sub`` connection (with a broker: to every
  ``/sub`` connection of every process sharing it, each message PUBLISHed once).
- ``/stats``: JSON with this process's subscriber count, ``hub.delivered`` and the sum of
  ``broadcasts_skipped`` over the subscribers (read by the benchmark after a run).
"""

from __future__ import annotations

import json
import os

from crowtwist import Connection, Crow

app = Crow()

sub = app.route("/sub").websocket()


def publish(conn: Connection, data: str | bytes, is_binary: bool) -> None:
    sub.broadcast(data)  # bytes: binary frames, str: text frames, as received


app.route("/pub").websocket().onmessage(publish)


@app.route("/stats")
def stats(request: object) -> str:
    skipped = sum(conn.broadcasts_skipped for conn in sub.connections)
    broker = app.broker_client
    return json.dumps(
        {
            "pid": os.getpid(),
            "subscribers": len(sub.connections),
            "skipped": skipped,
            "delivered": app._websockets.hub.delivered,  # frames handed to connections
            "published": broker.published if broker is not None else None,
            "received": broker.received if broker is not None else None,
        }
    )
