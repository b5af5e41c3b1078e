"""examples.demo plus two routes that answer with what a proxy forwarded (tests/test_deploy.py).

    twistd -n crow --routes tests.deploy_app
"""

from __future__ import annotations

import json
from typing import Any

from crowtwist import Connection
from examples.demo import app

FORWARDED = ("host", "origin", "x-forwarded-for", "x-forwarded-proto")


def _seen(request: Any) -> dict[str, Any]:
    return {name: request.requestHeaders.getRawHeaders(name) for name in FORWARDED}


@app.route("/_headers")
def headers(request: Any) -> dict[str, Any]:
    return {**_seen(request), "remote": request.getClientAddress().host}


_ws = app.route("/_headers/ws").websocket()


@_ws.onaccept
def _accept(request: Any) -> bool:
    request.userdata = _seen(request)
    return True


@_ws.onopen
def _opened(conn: Connection) -> None:
    conn.send_text(json.dumps({**conn.userdata, "remote": conn.get_remote_ip()}))


__all__ = ["app"]
