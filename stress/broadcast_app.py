"""The server side of stress/broadcast.py: a feed that broadcasts numbered messages to every
connection of its route, started with GET /start/<count>/<size>/<per-second>."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import LoopingCall

from crowtwist import Crow

app = Crow()
feed = app.route("/feed").websocket()
state: dict[str, Any] = {"sent": 0}


@app.route("/start/<uint>/<uint>/<uint>")
def start(request: Any, count: int, size: int, rate: int) -> str:
    body = "x" * max(0, size - 8)

    def tick() -> None:
        if state["sent"] >= count:
            loop.stop()
            return
        message = f"{state['sent']:08d}{body}"
        for conn in feed.connections:
            conn.send_text(message)
        state["sent"] += 1

    loop = LoopingCall(tick)
    loop.start(1.0 / rate)
    return "started\n"


@app.route("/status")
def status(request: Any) -> dict[str, int]:
    return {"sent": state["sent"], "open": len(feed.connections)}
