"""crowtwist: Crow's route and WebSocket API on Twisted, with autobahn underneath.

    from crowtwist import Crow

    app = Crow()
    app.route("/")(lambda req: "hello")
    (app.route("/ws").websocket()
        .onmessage(lambda conn, data, is_binary: conn.send_text(data)))
    app.run()
"""

from ._version import __version__
from ._app import Crow, Route
from ._http import Response
from ._settings import Settings
from .websocket import CloseCode, CloseStatusCode, Connection, ConnectionsView, WebSocketRule, accelerated

__all__ = [
    "CloseCode",
    "CloseStatusCode",
    "Connection",
    "ConnectionsView",
    "Crow",
    "Response",
    "Route",
    "Settings",
    "WebSocketRule",
    "__version__",
    "accelerated",
]
