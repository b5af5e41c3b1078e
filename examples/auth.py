"""Auth: ``onaccept`` checks a token before the upgrade and hands the user to the handlers.

    twistd -n crow --routes examples.auth
    # ws://127.0.0.1:18080/auth/lobby?token=s3cret  -> "welcome ann to lobby"
    # ws://127.0.0.1:18080/auth/lobby               -> 401 before any upgrade
"""

from __future__ import annotations

from typing import Any

from crowtwist import Connection, Crow, Response

TOKENS = {"s3cret": "ann", "hunter2": "bob"}


def add_routes(app: Crow) -> None:
    """Declare the authenticated room route on ``app``."""
    rule = app.route("/auth/<string>").websocket()

    @rule.onaccept
    def check(request: Any) -> bool | Response:
        token = (request.args.get(b"token") or [b""])[0].decode("utf-8", "replace")
        user = TOKENS.get(token)
        if user is None:
            return Response(401, "a valid ?token= is required\n", {"WWW-Authenticate": "Token"})
        request.userdata = {"user": user}  # Crow's void** userdata
        return True

    @rule.onopen
    def welcome(conn: Connection) -> None:
        conn.send_text(f"welcome {conn.userdata['user']} to {conn.params[0]}")

    @rule.onmessage
    def reply(conn: Connection, data: str | bytes, is_binary: bool) -> None:
        if not is_binary:
            conn.send_text(f"{conn.userdata['user']}: {data}")


app = Crow()
add_routes(app)

if __name__ == "__main__":
    app.run()
