"""Port of Crow's ``examples/example_chat.cpp``: a chat over long polling, with Crow's ``(req, res)`` handler form.

    twistd -n crow --routes examples.crow.chat --listen tcp:40080:interface=127.0.0.1

Open http://127.0.0.1:40080/ (``static/chat.html``) in two tabs.  ``/logs``
gives the last 100 messages and their count; ``/logs/<n>`` answers at once
if there are messages after the ``n``-th, else waits (at most 30 seconds)
until one is sent; ``POST /send`` sends its body.

A waiting ``/logs/<n>`` is Crow's response form: the handler keeps ``res``
and returns; the answer goes when ``res.end()`` is called, later.  Crow
checks ``res.is_alive()`` before keeping one; here ``req.notifyFinish()``
(twisted.web's) says when a client left, and the waiter is dropped then (a
late ``res.end()`` on a request whose client left does nothing anyway).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from crowtwist import BadRequest, Crow, Request, Response

from . import STATIC

log = Logger(namespace="examples.crow.chat")

POLL_TIMEOUT = 30.0
"""Seconds a ``/logs/<n>`` waits for a message (Crow's ``chrono::seconds(30)``)."""

msgs: list[str] = []
waiting: list[tuple[Response, IDelayedCall]] = []
"""The responses of the polls waiting for a message (Crow's ``ress``), each with its timeout."""


def forget(res: Response) -> None:
    """Drop ``res`` from ``waiting`` and cancel its timeout (a ``Response`` is compared by identity here)."""
    for index, (waiter, timeout) in enumerate(waiting):
        if waiter is res:
            del waiting[index]
            if timeout.active():
                timeout.cancel()
            return


def logs_after(after: int) -> dict[str, Any]:
    return {"msgs": msgs[after:], "last": len(msgs)}


def broadcast(msg: str) -> None:
    msgs.append(msg)
    body = logs_after(len(msgs) - 1)
    answered = list(waiting)
    waiting.clear()
    for res, timeout in answered:
        log.debug("{res} replied: {body}", res=res, body=body)
        timeout.cancel()
        res.body = body
        res.end()


app = Crow()
app.static_file("/", STATIC / "chat.html")              # Crow: mustache::load("example_chat.html").render()


@app.route("/logs")
def logs() -> dict[str, Any]:
    log.info("logs requested")
    return logs_after(max(0, len(msgs) - 100))


@app.route("/logs/<int>")
def logs_since(req: Request, res: Response, after: int) -> None:
    log.info("logs with last {after}", after=after)
    if 0 <= after < len(msgs):
        res.body = logs_after(after)
        res.end()
        return

    def expire() -> None:
        # Crow ends a poll older than 30 s with an empty body; this one says "nothing new".
        forget(res)
        res.body = logs_after(len(msgs))
        res.end()

    waiting.append((res, reactor.callLater(POLL_TIMEOUT, expire)))
    req.notifyFinish().addErrback(lambda _: forget(res))  # the client left
    log.debug("{res} stored {count}", res=res, count=len(waiting))


@app.route("/send").methods("GET", "POST")
def send(req: Request) -> str:
    try:
        text = req.body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the message is not UTF-8 text") from None
    log.info("msg from client: {text}", text=text)
    broadcast(text)
    return ""


if __name__ == "__main__":
    app.port(40080).run()
