"""crowtwist: Crow's route and WebSocket API on Twisted, with autobahn underneath.

```python
from crowtwist import Crow

app = Crow()
app.route("/")(lambda req: "hello")
(app.route("/ws").websocket()
    .onmessage(lambda conn, data, is_binary: conn.send_text(data)))
app.run()
```
"""

from ._version import __version__
from ._app import Blueprint, Crow, Route
from ._cookies import CookieParser
from ._cors import CORSHandler
from ._log import log_level, set_log_level
from ._middleware import Middleware
from ._request import Request
from ._response import BadRequest, HTTPError, Response, moved, moved_perm, redirect, redirect_perm
from ._settings import Settings
from .websocket import CloseCode, CloseStatusCode, Connection, ConnectionsView, WebSocketRule, accelerated

__all__ = [
    "BadRequest",
    "Blueprint",
    "CORSHandler",
    "CloseCode",
    "CloseStatusCode",
    "Connection",
    "ConnectionsView",
    "CookieParser",
    "Crow",
    "HTTPError",
    "Middleware",
    "Request",
    "Response",
    "Route",
    "Settings",
    "WebSocketRule",
    "__version__",
    "accelerated",
    "log_level",
    "moved",
    "moved_perm",
    "redirect",
    "redirect_perm",
    "set_log_level",
]
