"""Every example in one app: what the README's run command serves on 127.0.0.1:18080.

- ``ws://127.0.0.1:18080/`` and ``/echo``: echo (text as text, binary as binary)
- ``http://127.0.0.1:18080/``: the chat (redirects to ``/room/lobby``; any ``/room/<name>``
  is a room), talking to ``ws://.../chat/<room>?name=...``
- ``ws://127.0.0.1:18080/auth/<room>?token=s3cret``: onaccept and userdata
- ``http://127.0.0.1:18080/hello``: a plain HTTP route
"""

from crowtwist import Crow

from . import auth, chat, echo

app = Crow()
echo.add_routes(app)
chat.add_routes(app)
auth.add_routes(app)
