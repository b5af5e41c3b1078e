"""Fan-out peer for benchmarks/fanout.py: websockets (asyncio) with ``websockets.broadcast()``.

    python benchmarks/peers/websockets_broadcast.py --port PORT

Same shape as benchmarks/fanout_routes.py: ``/sub`` connections only listen; each message
sent on ``/pub`` goes to every open ``/sub`` connection with ``broadcast()`` (websockets >= 13,
``websockets.asyncio.server``: the frame is encoded once per connection's protocol and written
at once; a connection whose write buffer is full is *not* skipped, its buffer grows).
``/stats`` is answered over plain HTTP with the subscriber count.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import json
import os

from websockets.asyncio.server import broadcast, serve
from websockets.datastructures import Headers
from websockets.http11 import Response

subscribers: set = set()


async def handler(ws) -> None:
    path = ws.request.path
    if path == "/sub":
        subscribers.add(ws)
        try:
            await ws.wait_closed()
        finally:
            subscribers.discard(ws)
    elif path == "/pub":
        async for message in ws:
            broadcast(subscribers, message)  # bytes stay binary, str stays text
    else:
        await ws.close(1008, "no such route")


def process_request(connection, request):
    if request.path == "/stats":
        body = json.dumps({"pid": os.getpid(), "subscribers": len(subscribers), "skipped": None}).encode()
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return Response(http.HTTPStatus.OK.value, "OK", headers, body)
    return None


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, process_request=process_request, backlog=1024) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
